//! Who may use the dashboard.
//!
//! - On a loopback address no login is needed to look.
//! - On any other address the dashboard refuses to start without credentials.
//! - Control actions (revoke, terminate, rate limit, shutdown) always need
//!   credentials: without any configured they are refused with 403 and a hint.
//!
//! Credentials are HTTP basic auth (a user and password; browsers ask for them) or a
//! bearer token (`Authorization: Bearer TOKEN`, for scripts). When credentials are
//! configured every route needs them. Secrets are compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;

use crate::DashboardState;

/// Dashboard credentials.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// HTTP basic auth.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Credentials::Bearer { .. } => write!(f, "Bearer(***)"),
        }
    }
}

impl Credentials {
    /// Basic auth with `user` and `password`.
    pub fn basic(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    /// A bearer token.
    pub fn bearer(token: impl Into<String>) -> Credentials {
        Credentials::Bearer {
            token: token.into(),
        }
    }

    /// Whether an `Authorization` header value carries these credentials.
    pub fn accepts(&self, authorization: &str) -> bool {
        match self {
            Credentials::Bearer { token } => authorization
                .strip_prefix("Bearer ")
                .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())),
            Credentials::Basic { user, password } => {
                let Some(encoded) = authorization.strip_prefix("Basic ") else {
                    return false;
                };
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
                else {
                    return false;
                };
                let expected = format!("{user}:{password}");
                constant_time_eq(&decoded, expected.as_bytes())
            }
        }
    }
}

/// Equality whose time does not depend on where the inputs differ, nor stops early
/// when their lengths differ ([`celeriac_core::signing::constant_time_eq`]).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    celeriac_core::signing::constant_time_eq(a, b)
}

/// Whether `path` is a control action.
pub(crate) fn is_control(path: &str) -> bool {
    path.starts_with("/api/control/")
        || (path.starts_with("/api/tasks/") && path.ends_with("/revoke"))
        || (path.starts_with("/api/workers/") && path.ends_with("/shutdown"))
}

/// The middleware: checks credentials as the module docs say.
pub(crate) async fn guard(
    State(state): State<DashboardState>,
    request: Request,
    next: Next,
) -> Response {
    let control = is_control(request.uri().path());
    match &state.credentials {
        None if control => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "control actions need credentials: start the dashboard with --token TOKEN or --user USER --password PASSWORD (CELERIAC_DASHBOARD_TOKEN / _USER / _PASSWORD)"})),
        )
            .into_response(),
        None => next.run(request).await,
        Some(credentials) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if credentials.accepts(given) {
                return next.run(request).await;
            }
            let challenge = match credentials {
                Credentials::Basic { .. } => "Basic realm=\"celeriac\", charset=\"UTF-8\"",
                Credentials::Bearer { .. } => "Bearer realm=\"celeriac\"",
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                Json(json!({"error": "credentials required"})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_credentials_are_checked() {
        let basic = Credentials::basic("ops", "s3cret");
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ops:s3cret")
        );
        assert!(basic.accepts(&header));
        assert!(!basic.accepts("Basic b3BzOndyb25n"));
        assert!(!basic.accepts("Bearer s3cret"));
        let bearer = Credentials::bearer("tok");
        assert!(bearer.accepts("Bearer tok"));
        assert!(!bearer.accepts("Bearer tok2"));
        assert!(!bearer.accepts(""));
        // Prefixes and extensions of the secret are refused (the comparison runs
        // over the longer input instead of stopping at a length mismatch).
        assert!(!bearer.accepts("Bearer to"));
        assert!(!bearer.accepts("Bearer tok\0"));
        let prefix = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ops:s3cre")
        );
        assert!(!basic.accepts(&prefix));
        assert_eq!(format!("{basic:?}"), "Basic(ops, ***)");
    }

    #[test]
    fn control_paths_are_recognised() {
        assert!(is_control("/api/tasks/abc/revoke"));
        assert!(is_control("/api/control/rate-limit"));
        assert!(is_control("/api/workers/w@h/shutdown"));
        assert!(!is_control("/api/tasks/abc"));
        assert!(!is_control("/api/schedules/x/run"));
    }
}
