//! Solar schedules: Celery's `solar(event, lat, lon)`, due at a solar event
//! (sunrise, sunset, dawn, dusk, solar noon) at a place on Earth.
//!
//! Celery computes these with PyEphem; celeriac computes the Sun's position with the
//! low-precision formulas of Meeus, *Astronomical Algorithms* (ch. 25, about 0.01°)
//! and solves for the event by hour angle, with Celery's conventions:
//!
//! | event | the Sun's … | crosses |
//! |---|---|---|
//! | `dawn_astronomical` / `dusk_astronomical` | centre, rising / setting | −18° |
//! | `dawn_nautical` / `dusk_nautical` | centre, rising / setting | −12° |
//! | `dawn_civil` / `dusk_civil` | centre, rising / setting | −6° |
//! | `sunrise` / `sunset` | upper limb, rising / setting | −0°34′ |
//! | `solar_noon` | centre | the meridian (transit) |
//!
//! No atmospheric refraction beyond the −0°34′ convention (Celery sets PyEphem's
//! pressure to 0) and sea-level observers. Results agree with Celery's to well under a
//! minute (`tests/celery_crosscheck.rs` checks a table against the real package).
//!
//! Where an event does not happen on a day (the midnight sun, the polar night, no
//! astronomical dusk in a northern summer), the next day it does happen is used, as
//! Celery does; an event that does not happen within a year never comes
//! ([`Solar::next_after`] is `None`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ScheduleError;

/// One of Celery's solar events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolarEvent {
    /// The Sun's centre rises through −18°.
    DawnAstronomical,
    /// The Sun's centre rises through −12°.
    DawnNautical,
    /// The Sun's centre rises through −6°.
    DawnCivil,
    /// The Sun's upper limb rises through −0°34′.
    Sunrise,
    /// The Sun crosses the meridian.
    SolarNoon,
    /// The Sun's upper limb sets through −0°34′.
    Sunset,
    /// The Sun's centre sets through −6°.
    DuskCivil,
    /// The Sun's centre sets through −12°.
    DuskNautical,
    /// The Sun's centre sets through −18°.
    DuskAstronomical,
}

impl SolarEvent {
    /// Every event, in the order of a day.
    pub const ALL: [SolarEvent; 9] = [
        SolarEvent::DawnAstronomical,
        SolarEvent::DawnNautical,
        SolarEvent::DawnCivil,
        SolarEvent::Sunrise,
        SolarEvent::SolarNoon,
        SolarEvent::Sunset,
        SolarEvent::DuskCivil,
        SolarEvent::DuskNautical,
        SolarEvent::DuskAstronomical,
    ];

    /// Celery's name (`sunrise`, `dusk_civil`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SolarEvent::DawnAstronomical => "dawn_astronomical",
            SolarEvent::DawnNautical => "dawn_nautical",
            SolarEvent::DawnCivil => "dawn_civil",
            SolarEvent::Sunrise => "sunrise",
            SolarEvent::SolarNoon => "solar_noon",
            SolarEvent::Sunset => "sunset",
            SolarEvent::DuskCivil => "dusk_civil",
            SolarEvent::DuskNautical => "dusk_nautical",
            SolarEvent::DuskAstronomical => "dusk_astronomical",
        }
    }

    /// What the event is: a transit, or a crossing of an altitude (degrees) by the
    /// Sun's centre (`true`) or upper limb, rising or setting.
    fn kind(self) -> EventKind {
        let crossing = |altitude: f64, centre: bool, rising: bool| EventKind::Crossing {
            altitude,
            centre,
            rising,
        };
        match self {
            SolarEvent::DawnAstronomical => crossing(-18.0, true, true),
            SolarEvent::DawnNautical => crossing(-12.0, true, true),
            SolarEvent::DawnCivil => crossing(-6.0, true, true),
            SolarEvent::Sunrise => crossing(-34.0 / 60.0, false, true),
            SolarEvent::SolarNoon => EventKind::Transit,
            SolarEvent::Sunset => crossing(-34.0 / 60.0, false, false),
            SolarEvent::DuskCivil => crossing(-6.0, true, false),
            SolarEvent::DuskNautical => crossing(-12.0, true, false),
            SolarEvent::DuskAstronomical => crossing(-18.0, true, false),
        }
    }
}

impl fmt::Display for SolarEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SolarEvent {
    type Err = ScheduleError;

    fn from_str(name: &str) -> Result<SolarEvent, ScheduleError> {
        SolarEvent::ALL
            .into_iter()
            .find(|event| event.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = SolarEvent::ALL.iter().map(|e| e.name()).collect();
                ScheduleError::Solar(format!(
                    "unknown solar event {name:?}, expected one of {}",
                    known.join(", ")
                ))
            })
    }
}

#[derive(Debug, Clone, Copy)]
enum EventKind {
    Transit,
    Crossing {
        altitude: f64,
        centre: bool,
        rising: bool,
    },
}

/// Due at every occurrence of a solar event at a place (Celery's `solar`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SolarSpec", into = "SolarSpec")]
pub struct Solar {
    event: SolarEvent,
    latitude: f64,
    longitude: f64,
}

// Latitude and longitude are validated finite, so equality is an equivalence.
impl Eq for Solar {}

/// The serialized form of a [`Solar`] schedule (`{"event", "lat", "lon"}`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SolarSpec {
    /// The event.
    pub event: SolarEvent,
    /// Latitude in degrees, north positive.
    pub lat: f64,
    /// Longitude in degrees, east positive.
    pub lon: f64,
}

impl TryFrom<SolarSpec> for Solar {
    type Error = ScheduleError;

    fn try_from(spec: SolarSpec) -> Result<Solar, ScheduleError> {
        Solar::new(spec.event, spec.lat, spec.lon)
    }
}

impl From<Solar> for SolarSpec {
    fn from(solar: Solar) -> SolarSpec {
        SolarSpec {
            event: solar.event,
            lat: solar.latitude,
            lon: solar.longitude,
        }
    }
}

impl Solar {
    /// `event` at `latitude` (−90..=90, north positive) and `longitude` (−180..=180,
    /// east positive), in degrees; Celery's bounds and messages.
    pub fn new(event: SolarEvent, latitude: f64, longitude: f64) -> Result<Solar, ScheduleError> {
        if !(-90.0..=90.0).contains(&latitude) {
            return Err(ScheduleError::Solar(format!(
                "latitude {latitude} is invalid, must be between -90 and 90"
            )));
        }
        if !(-180.0..=180.0).contains(&longitude) {
            return Err(ScheduleError::Solar(format!(
                "longitude {longitude} is invalid, must be between -180 and 180"
            )));
        }
        Ok(Solar {
            event,
            latitude,
            longitude,
        })
    }

    /// The event.
    pub fn event(&self) -> SolarEvent {
        self.event
    }

    /// Latitude in degrees.
    pub fn latitude(&self) -> f64 {
        self.latitude
    }

    /// Longitude in degrees.
    pub fn longitude(&self) -> f64 {
        self.longitude
    }

    /// The first occurrence of the event strictly after `after` (to the second), or
    /// `None` when it does not happen within a year.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = julian_day(after);
        let place = Place {
            latitude: self.latitude.to_radians(),
            longitude: self.longitude,
        };
        // Each day's event hangs off that day's transit: begin with the transit
        // nearest `after` minus a day, so an event of the day before that comes after
        // `after` (a dusk past midnight) is not skipped.
        let first = place.transit_near(start - 1.0);
        for day in 0..=MAX_SEARCH_DAYS {
            let transit = place.transit_near(first + f64::from(day));
            let event = match self.event.kind() {
                EventKind::Transit => Some(transit),
                EventKind::Crossing {
                    altitude,
                    centre,
                    rising,
                } => place.crossing(transit, altitude, centre, rising),
            };
            if let Some(at) = event.map(from_julian_day) {
                // Whole seconds, as beat stores them; strictly after.
                if let Some(at) = at.filter(|at| *at > after) {
                    return Some(at);
                }
            }
        }
        None
    }
}

impl fmt::Display for Solar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "solar {} at latitude {}, longitude {}",
            self.event, self.latitude, self.longitude
        )
    }
}

/// Celery searches a year of days for an event that does not happen every day.
const MAX_SEARCH_DAYS: u32 = 367;
/// Unix epoch as a Julian day.
const UNIX_EPOCH_JD: f64 = 2_440_587.5;
/// J2000.0 as a Julian day.
const J2000: f64 = 2_451_545.0;
/// How fast the Sun's hour angle grows, degrees per day (one solar day per turn).
const HOUR_ANGLE_RATE: f64 = 360.0;

fn julian_day(at: DateTime<Utc>) -> f64 {
    at.timestamp() as f64 / 86_400.0
        + f64::from(at.timestamp_subsec_nanos()) / 86_400e9
        + UNIX_EPOCH_JD
}

/// The instant of a Julian day, rounded to the second.
fn from_julian_day(jd: f64) -> Option<DateTime<Utc>> {
    let seconds = ((jd - UNIX_EPOCH_JD) * 86_400.0).round();
    if !seconds.is_finite() || seconds.abs() > 1e15 {
        return None;
    }
    DateTime::from_timestamp(seconds as i64, 0)
}

/// Angles in degrees to (−180, 180].
fn wrap_degrees(angle: f64) -> f64 {
    let wrapped = angle.rem_euclid(360.0);
    if wrapped > 180.0 {
        wrapped - 360.0
    } else {
        wrapped
    }
}

/// Where the Sun is, seen from the Earth's centre, at a Julian day.
#[derive(Debug, Clone, Copy)]
struct SunPosition {
    /// Right ascension, degrees.
    right_ascension: f64,
    /// Declination, radians.
    declination: f64,
    /// Apparent semi-diameter, degrees.
    semi_diameter: f64,
    /// Greenwich apparent sidereal time, degrees.
    sidereal_time: f64,
}

impl SunPosition {
    /// Meeus, *Astronomical Algorithms*, ch. 25 (low accuracy) and ch. 12.
    fn at(jd: f64) -> SunPosition {
        let t = (jd - J2000) / 36_525.0;
        let mean_longitude = 280.466_46 + t * (36_000.769_83 + t * 0.000_303_2);
        let mean_anomaly = 357.529_11 + t * (35_999.050_29 - t * 0.000_153_7);
        let eccentricity = 0.016_708_634 - t * (0.000_042_037 + t * 0.000_000_126_7);
        let m = mean_anomaly.to_radians();
        let centre = m.sin() * (1.914_602 - t * (0.004_817 + t * 0.000_014))
            + (2.0 * m).sin() * (0.019_993 - t * 0.000_101)
            + (3.0 * m).sin() * 0.000_289;
        let true_longitude = mean_longitude + centre;
        let true_anomaly = (mean_anomaly + centre).to_radians();
        let distance = 1.000_001_018 * (1.0 - eccentricity * eccentricity)
            / (1.0 + eccentricity * true_anomaly.cos());
        let node = (125.04 - 1_934.136 * t).to_radians();
        let apparent_longitude = (true_longitude - 0.005_69 - 0.004_78 * node.sin()).to_radians();
        let mean_obliquity =
            23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.000_59 - t * 0.001_813))) / 60.0) / 60.0;
        let obliquity = (mean_obliquity + 0.002_56 * node.cos()).to_radians();
        let right_ascension = (obliquity.cos() * apparent_longitude.sin())
            .atan2(apparent_longitude.cos())
            .to_degrees();
        let declination = (obliquity.sin() * apparent_longitude.sin()).asin();
        // Nutation in longitude (degrees), for apparent sidereal time.
        let sun_longitude = (280.4665 + 36_000.769_8 * t).to_radians();
        let moon_longitude = (218.3165 + 481_267.881_3 * t).to_radians();
        let nutation = (-17.20 * node.sin()
            - 1.32 * (2.0 * sun_longitude).sin()
            - 0.23 * (2.0 * moon_longitude).sin()
            + 0.21 * (2.0 * node).sin())
            / 3_600.0;
        let mean_sidereal = 280.460_618_37
            + 360.985_647_366_29 * (jd - J2000)
            + t * t * (0.000_387_933 - t / 38_710_000.0);
        SunPosition {
            right_ascension,
            declination,
            semi_diameter: 959.63 / 3_600.0 / distance,
            sidereal_time: mean_sidereal + nutation * obliquity.cos(),
        }
    }
}

/// An observer at sea level.
struct Place {
    /// Radians.
    latitude: f64,
    /// Degrees, east positive.
    longitude: f64,
}

impl Place {
    /// The Sun's local hour angle at `jd`, degrees in (−180, 180].
    fn hour_angle(&self, sun: &SunPosition) -> f64 {
        wrap_degrees(sun.sidereal_time + self.longitude - sun.right_ascension)
    }

    /// The instant nearest `jd` at which the Sun's hour angle is `hour_angle` degrees
    /// (0: transit, 180: lower culmination).
    fn hour_angle_near(&self, jd: f64, hour_angle: f64) -> f64 {
        let mut at = jd;
        for _ in 0..8 {
            let step =
                wrap_degrees(hour_angle - self.hour_angle(&SunPosition::at(at))) / HOUR_ANGLE_RATE;
            at += step;
            if step.abs() < 1e-7 {
                break;
            }
        }
        at
    }

    /// The transit (hour angle 0) nearest `jd`.
    fn transit_near(&self, jd: f64) -> f64 {
        self.hour_angle_near(jd, 0.0)
    }

    /// How far (degrees) the Sun's centre or upper limb is above `altitude` at `jd`.
    fn height_above(&self, jd: f64, altitude: f64, centre: bool) -> f64 {
        let sun = SunPosition::at(jd);
        let sin_altitude = self.latitude.sin() * sun.declination.sin()
            + self.latitude.cos()
                * sun.declination.cos()
                * self.hour_angle(&sun).to_radians().cos();
        let mut height = sin_altitude.clamp(-1.0, 1.0).asin().to_degrees() - altitude;
        if !centre {
            height += sun.semi_diameter;
        }
        height
    }

    /// The crossing of `altitude` (degrees) by the Sun's centre or upper limb between
    /// `transit` and the lower culmination before it (rising) or after it (setting);
    /// `None` when the Sun stays above or below it over that half day. Found by
    /// bisection: the Sun's altitude only grows from lower culmination to transit and
    /// only falls after it.
    fn crossing(&self, transit: f64, altitude: f64, centre: bool, rising: bool) -> Option<f64> {
        let half_day = if rising { -0.5 } else { 0.5 };
        let culmination = self.hour_angle_near(transit + half_day, 180.0);
        let (mut low, mut high) = if rising {
            (culmination, transit)
        } else {
            (transit, culmination)
        };
        // `low` is where the Sun is below the altitude for a rising, above it for a
        // setting; the bisection keeps that side.
        let below_at_low = rising;
        let height_low = self.height_above(low, altitude, centre);
        let height_high = self.height_above(high, altitude, centre);
        let bracketed = if below_at_low {
            height_low < 0.0 && height_high >= 0.0
        } else {
            height_low >= 0.0 && height_high < 0.0
        };
        if !bracketed {
            return None;
        }
        for _ in 0..48 {
            let middle = (low + high) / 2.0;
            let below = self.height_above(middle, altitude, centre) < 0.0;
            if below == below_at_low {
                low = middle;
            } else {
                high = middle;
            }
        }
        Some((low + high) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("an RFC 3339 instant")
    }

    fn next(event: SolarEvent, lat: f64, lon: f64, after: &str) -> DateTime<Utc> {
        Solar::new(event, lat, lon)
            .expect("valid")
            .next_after(at(after))
            .expect("the event happens")
    }

    fn assert_near(ours: DateTime<Utc>, expected: &str, slack_secs: i64) {
        let expected = at(expected);
        let off = (ours - expected).num_seconds().abs();
        assert!(
            off <= slack_secs,
            "{ours} is {off} s from {expected} (allowed {slack_secs} s)"
        );
    }

    #[test]
    fn greenwich_equinox_events_match_celery() {
        // What Celery 5 (PyEphem 4.2) computes for Greenwich on 2026-03-20.
        let (lat, lon) = (51.4779, -0.0015);
        let after = "2026-03-20T00:00:00Z";
        assert_near(
            next(SolarEvent::Sunrise, lat, lon, after),
            "2026-03-20T06:02:54Z",
            30,
        );
        assert_near(
            next(SolarEvent::SolarNoon, lat, lon, after),
            "2026-03-20T12:07:26Z",
            30,
        );
        assert_near(
            next(SolarEvent::Sunset, lat, lon, after),
            "2026-03-20T18:13:00Z",
            30,
        );
    }

    #[test]
    fn events_are_strictly_after_and_follow_in_day_order() {
        let (lat, lon) = (37.5665, 126.978);
        // Midnight in Seoul (UTC+9): the day's events follow.
        let mut cursor = at("2026-05-31T15:00:00Z");
        let mut times = Vec::new();
        for event in SolarEvent::ALL {
            let t = Solar::new(event, lat, lon)
                .expect("valid")
                .next_after(cursor)
                .expect("happens in Seoul");
            assert!(t > cursor);
            times.push(t);
        }
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(sorted, times, "one day's events come in day order");
        // The next sunrise after a sunrise is the following day's.
        let sunrise = Solar::new(SolarEvent::Sunrise, lat, lon).expect("valid");
        let first = sunrise.next_after(cursor).expect("sunrise");
        cursor = first;
        let second = sunrise.next_after(cursor).expect("next sunrise");
        let gap = (second - first).num_seconds();
        assert!((86_300..=86_500).contains(&gap), "{gap}");
    }

    #[test]
    fn polar_days_skip_to_the_first_day_the_event_happens() {
        // Midnight sun in Tromsø: the first sunset after mid-June is on 25 July
        // (Celery: 22:36:15 UTC; near-tangent crossings are the least precise).
        let sunset = next(SolarEvent::Sunset, 69.6492, 18.9553, "2026-06-15T00:00:00Z");
        assert_near(sunset, "2026-07-25T22:36:15Z", 120);
        // Svalbard: the Sun first gets 18° below the horizon on 9 October (Celery:
        // 21:52:24 UTC).
        let dusk = next(
            SolarEvent::DuskAstronomical,
            78.22,
            15.65,
            "2026-06-15T00:00:00Z",
        );
        assert_near(dusk, "2026-10-09T21:52:24Z", 300);
    }

    #[test]
    fn bounds_and_names_are_celerys() {
        assert!(Solar::new(SolarEvent::Sunrise, 91.0, 0.0).is_err());
        assert!(Solar::new(SolarEvent::Sunrise, 0.0, -180.5).is_err());
        assert!(Solar::new(SolarEvent::Sunrise, f64::NAN, 0.0).is_err());
        assert_eq!(
            "dusk_civil".parse::<SolarEvent>().expect("known"),
            SolarEvent::DuskCivil
        );
        assert!("moonrise".parse::<SolarEvent>().is_err());
        let solar = Solar::new(SolarEvent::Sunset, 52.5, 13.4).expect("valid");
        let json = serde_json::to_value(solar).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"event": "sunset", "lat": 52.5, "lon": 13.4})
        );
        let back: Solar = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, solar);
        assert!(serde_json::from_value::<Solar>(
            serde_json::json!({"event": "sunset", "lat": 95.0, "lon": 0.0})
        )
        .is_err());
    }
}
