//! The options of `#[task(...)]`: parsing and compile-time validation.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Ident, Lit, LitBool, LitInt, LitStr, Token, Type};

use crate::grammar::{self, Rate};

/// Every option `#[task]` accepts, in the order the unknown-option error lists them.
pub(crate) const OPTION_NAMES: &[&str] = &[
    "name",
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "acks_late",
    "ignore_result",
    "max_retries",
    "default_retry_delay",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "autoretry_for",
    "soft_time_limit",
    "time_limit",
    "expires",
    "rate_limit",
    "skip_if_succeeded",
    "single_instance",
    "lock_key",
    "on_conflict",
    "lock_wait",
    "lock_retry_delay",
    "lock_lease",
    "crate",
];

/// Shortest `lock_lease`: it is renewed every third, and a shorter one only adds
/// writes without making a dead worker's lock lapse meaningfully sooner.
pub(crate) const MIN_LOCK_LEASE: Duration = Duration::from_secs(1);

/// `on_conflict = "skip" | "retry" | "wait"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Conflict {
    Skip,
    Retry,
    Wait,
}

/// `max_retries = 5` or `max_retries = unlimited`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MaxRetries {
    Limited(u32),
    Unlimited,
}

/// `retry_backoff = true | false | "2s"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RetryBackoff {
    Off,
    /// On with Celery's base of one second.
    On,
    /// On with this base delay.
    Base(Duration),
}

/// One entry of `autoretry_for(...)`.
pub(crate) enum AutoRetry {
    /// A Rust error type, matched with `TaskFailure::is::<T>()`.
    Type(Box<Type>),
    /// An error kind name matched against `TaskFailure::exc_type` (`"*"` = any).
    Name(LitStr),
}

/// A value together with the span of its option name, for cross-option errors.
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// The parsed `#[task(...)]` options.
#[derive(Default)]
pub(crate) struct TaskAttr {
    pub(crate) name: Option<LitStr>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) routing_key: Option<LitStr>,
    pub(crate) exchange: Option<LitStr>,
    pub(crate) priority: Option<u8>,
    pub(crate) acks_late: Option<bool>,
    pub(crate) ignore_result: Option<bool>,
    pub(crate) max_retries: Option<MaxRetries>,
    pub(crate) default_retry_delay: Option<Duration>,
    pub(crate) retry_backoff: Option<Spanned<RetryBackoff>>,
    pub(crate) retry_backoff_max: Option<Spanned<Duration>>,
    pub(crate) retry_jitter: Option<Spanned<bool>>,
    pub(crate) autoretry_for: Vec<AutoRetry>,
    pub(crate) soft_time_limit: Option<Spanned<Duration>>,
    pub(crate) time_limit: Option<Spanned<Duration>>,
    pub(crate) expires: Option<Duration>,
    pub(crate) rate_limit: Option<Rate>,
    pub(crate) skip_if_succeeded: Option<bool>,
    pub(crate) single_instance: Option<Spanned<bool>>,
    /// Parameter names from `lock_key = "a, b"`, with the literal's span.
    pub(crate) lock_key: Option<Spanned<Vec<String>>>,
    pub(crate) on_conflict: Option<Spanned<Conflict>>,
    pub(crate) lock_wait: Option<Spanned<Duration>>,
    pub(crate) lock_retry_delay: Option<Spanned<Duration>>,
    pub(crate) lock_lease: Option<Spanned<Duration>>,
    pub(crate) krate: Option<syn::Path>,
    seen: Vec<String>,
}

impl TaskAttr {
    /// Parses and validates the attribute's arguments.
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<TaskAttr> {
        let mut attr = TaskAttr::default();
        let parser = syn::meta::parser(|meta| attr.parse_one(meta));
        parser.parse2(tokens)?;
        attr.validate()?;
        Ok(attr)
    }

    fn parse_one(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(key) = meta.path.get_ident().map(|ident| ident.unraw().to_string()) else {
            return Err(meta.error(unknown_option_message(&path_text(&meta.path))));
        };
        if !OPTION_NAMES.contains(&key.as_str()) {
            return Err(meta.error(unknown_option_message(&key)));
        }
        if self.seen.contains(&key) {
            return Err(meta.error(format!("duplicate #[task] option `{key}`")));
        }
        self.seen.push(key.clone());
        let span = meta
            .path
            .get_ident()
            .map_or_else(Span::call_site, Ident::span);
        match key.as_str() {
            "name" => self.name = Some(non_empty_string(&meta, &key)?),
            "queue" => self.queue = Some(non_empty_string(&meta, &key)?),
            "routing_key" => self.routing_key = Some(meta.value()?.parse()?),
            "exchange" => self.exchange = Some(meta.value()?.parse()?),
            "priority" => {
                let lit: LitInt = meta.value()?.parse()?;
                let priority = lit.base10_parse::<u8>().map_err(|_| {
                    syn::Error::new(lit.span(), "`priority` must be an integer from 0 to 255")
                })?;
                self.priority = Some(priority);
            }
            "acks_late" => self.acks_late = Some(flag(&meta)?),
            "ignore_result" => self.ignore_result = Some(flag(&meta)?),
            "skip_if_succeeded" => self.skip_if_succeeded = Some(flag(&meta)?),
            "single_instance" => {
                self.single_instance = Some(Spanned {
                    value: flag(&meta)?,
                    span,
                })
            }
            "lock_key" => {
                let lit = non_empty_string(&meta, &key)?;
                let names = lock_key_names(&lit)?;
                self.lock_key = Some(Spanned {
                    value: names,
                    span: lit.span(),
                });
            }
            "on_conflict" => {
                let lit: LitStr = meta.value()?.parse()?;
                let value = match lit.value().as_str() {
                    "skip" => Conflict::Skip,
                    "retry" => Conflict::Retry,
                    "wait" => Conflict::Wait,
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                            "`on_conflict` must be \"skip\", \"retry\" or \"wait\", not {other:?}"
                        ),
                        ))
                    }
                };
                self.on_conflict = Some(Spanned { value, span });
            }
            "lock_wait" => {
                self.lock_wait = Some(Spanned {
                    value: duration(meta.value()?)?,
                    span,
                })
            }
            "lock_retry_delay" => {
                self.lock_retry_delay = Some(Spanned {
                    value: duration(meta.value()?)?,
                    span,
                })
            }
            "lock_lease" => {
                self.lock_lease = Some(Spanned {
                    value: duration(meta.value()?)?,
                    span,
                })
            }
            "retry_jitter" => {
                self.retry_jitter = Some(Spanned {
                    value: flag(&meta)?,
                    span,
                })
            }
            "max_retries" => self.max_retries = Some(max_retries(meta.value()?)?),
            "default_retry_delay" => self.default_retry_delay = Some(duration(meta.value()?)?),
            "retry_backoff" => {
                self.retry_backoff = Some(Spanned {
                    value: retry_backoff(&meta)?,
                    span,
                })
            }
            "retry_backoff_max" => {
                self.retry_backoff_max = Some(Spanned {
                    value: duration(meta.value()?)?,
                    span,
                })
            }
            "soft_time_limit" => {
                self.soft_time_limit = Some(Spanned {
                    value: duration(meta.value()?)?,
                    span,
                })
            }
            "time_limit" => {
                self.time_limit = Some(Spanned {
                    value: duration(meta.value()?)?,
                    span,
                })
            }
            "expires" => self.expires = Some(duration(meta.value()?)?),
            "rate_limit" => {
                let lit: LitStr = meta.value()?.parse()?;
                let rate = grammar::parse_rate_limit(&lit.value())
                    .map_err(|message| syn::Error::new(lit.span(), message))?;
                self.rate_limit = Some(rate);
            }
            "autoretry_for" => self.autoretry_for = autoretry_for(&meta)?,
            "crate" => {
                let lit: LitStr = meta.value()?.parse()?;
                self.krate = Some(lit.parse()?);
            }
            other => return Err(meta.error(unknown_option_message(other))),
        }
        Ok(())
    }

    /// Whether the task is single-instance (`single_instance` or `single_instance = true`).
    pub(crate) fn is_single_instance(&self) -> bool {
        self.single_instance.as_ref().is_some_and(|s| s.value)
    }

    fn validate_locks(&self) -> syn::Result<()> {
        if !self.is_single_instance() {
            let stray = [
                ("lock_key", self.lock_key.as_ref().map(|s| s.span)),
                ("on_conflict", self.on_conflict.as_ref().map(|s| s.span)),
                ("lock_wait", self.lock_wait.as_ref().map(|s| s.span)),
                (
                    "lock_retry_delay",
                    self.lock_retry_delay.as_ref().map(|s| s.span),
                ),
                ("lock_lease", self.lock_lease.as_ref().map(|s| s.span)),
            ];
            if let Some((name, Some(span))) = stray.into_iter().find(|(_, span)| span.is_some()) {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "`{name}` only applies to single-instance tasks: add `single_instance`"
                    ),
                ));
            }
            return Ok(());
        }
        let conflict = self
            .on_conflict
            .as_ref()
            .map(|c| c.value)
            .unwrap_or(Conflict::Skip);
        if let (Some(wait), false) = (&self.lock_wait, conflict == Conflict::Wait) {
            return Err(syn::Error::new(
                wait.span,
                "`lock_wait` only applies with `on_conflict = \"wait\"`",
            ));
        }
        if let (Some(delay), Conflict::Skip) = (&self.lock_retry_delay, conflict) {
            return Err(syn::Error::new(
                delay.span,
                "`lock_retry_delay` only applies with `on_conflict = \"retry\"` or `\"wait\"` (a skipped run is not retried)",
            ));
        }
        if let Some(lease) = &self.lock_lease {
            if lease.value < MIN_LOCK_LEASE {
                return Err(syn::Error::new(
                    lease.span,
                    format!(
                        "`lock_lease` must be at least {MIN_LOCK_LEASE:?} (it is renewed every third while the task runs), got {:?}",
                        lease.value
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate(&self) -> syn::Result<()> {
        self.validate_locks()?;
        let backoff_on = matches!(
            self.retry_backoff.as_ref().map(|b| b.value),
            Some(RetryBackoff::On | RetryBackoff::Base(_))
        );
        if !backoff_on {
            if let Some(max) = &self.retry_backoff_max {
                return Err(syn::Error::new(
                    max.span,
                    "`retry_backoff_max` only applies with `retry_backoff = true` (or a base delay such as `retry_backoff = \"2s\"`)",
                ));
            }
            if let Some(jitter) = &self.retry_jitter {
                return Err(syn::Error::new(
                    jitter.span,
                    "`retry_jitter` only applies with `retry_backoff = true` (or a base delay such as `retry_backoff = \"2s\"`)",
                ));
            }
        }
        if let (Some(soft), Some(hard)) = (&self.soft_time_limit, &self.time_limit) {
            if soft.value > hard.value {
                return Err(syn::Error::new(
                    soft.span,
                    format!(
                        "`soft_time_limit` ({:?}) is longer than `time_limit` ({:?}): the task would be stopped before it is warned",
                        soft.value, hard.value
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn path_text(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

fn unknown_option_message(key: &str) -> String {
    format!(
        "unknown #[task] option `{key}`; expected one of: {}",
        OPTION_NAMES.join(", ")
    )
}

fn non_empty_string(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    let lit: LitStr = meta.value()?.parse()?;
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{key}` must not be empty"),
        ));
    }
    Ok(lit)
}

/// `lock_key = "customer_id"` or `lock_key = "customer_id, region"`: parameter names.
fn lock_key_names(lit: &LitStr) -> syn::Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for part in lit.value().split(',') {
        let name = part.trim();
        if name.is_empty() || syn::parse_str::<Ident>(name).is_err() {
            return Err(syn::Error::new(
                lit.span(),
                format!("`lock_key` lists parameter names separated by commas, e.g. \"customer_id\" or \"customer_id, region\"; {name:?} is not a name"),
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(syn::Error::new(
                lit.span(),
                format!("`lock_key` names `{name}` twice"),
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// `flag`, `flag = true` or `flag = false`.
fn flag(meta: &ParseNestedMeta<'_>) -> syn::Result<bool> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(true);
    }
    let lit: LitBool = meta.value()?.parse()?;
    Ok(lit.value)
}

fn max_retries(input: ParseStream<'_>) -> syn::Result<MaxRetries> {
    if input.peek(Token![-]) {
        return Err(input.error(
            "`max_retries` cannot be negative; write `max_retries = unlimited` for no limit",
        ));
    }
    if input.peek(Ident) {
        let ident: Ident = input.parse()?;
        if ident == "unlimited" {
            return Ok(MaxRetries::Unlimited);
        }
        return Err(syn::Error::new(
            ident.span(),
            "expected a number of retries or `unlimited`",
        ));
    }
    let lit: LitInt = input.parse()?;
    lit.base10_parse::<u32>().map(MaxRetries::Limited)
}

/// A duration: `"30s"`, `"5m"`, `"1h"`, `"500ms"`, `"2d"`, or a number of seconds.
fn duration(input: ParseStream<'_>) -> syn::Result<Duration> {
    let lit: Lit = input.parse()?;
    duration_of(&lit)
}

fn duration_of(lit: &Lit) -> syn::Result<Duration> {
    let parsed = match lit {
        Lit::Str(text) => grammar::parse_duration(&text.value()),
        Lit::Int(int) => grammar::parse_duration(int.base10_digits()),
        Lit::Float(float) => grammar::parse_duration(float.base10_digits()),
        _ => Err(
            "expected a duration such as \"30s\", \"5m\", \"1h\", \"500ms\" or a number of seconds"
                .to_string(),
        ),
    };
    parsed.map_err(|message| syn::Error::new(lit.span(), message))
}

/// `retry_backoff = true | false | "2s" | 2`.
fn retry_backoff(meta: &ParseNestedMeta<'_>) -> syn::Result<RetryBackoff> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(RetryBackoff::On);
    }
    let lit: Lit = meta.value()?.parse()?;
    match &lit {
        Lit::Bool(flag) if flag.value => Ok(RetryBackoff::On),
        Lit::Bool(_) => Ok(RetryBackoff::Off),
        other => duration_of(other).map(RetryBackoff::Base),
    }
}

/// `autoretry_for(std::io::Error, MyError, "TimeoutError", "*")`.
fn autoretry_for(meta: &ParseNestedMeta<'_>) -> syn::Result<Vec<AutoRetry>> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(
            "write `autoretry_for(SomeError, \"PythonErrorName\")`: Rust error types and/or error kind names",
        ));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    let mut entries = Vec::new();
    while !content.is_empty() {
        if content.peek(LitStr) {
            let name: LitStr = content.parse()?;
            if name.value().is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    "an error kind name must not be empty",
                ));
            }
            entries.push(AutoRetry::Name(name));
        } else {
            entries.push(AutoRetry::Type(Box::new(content.parse()?)));
        }
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    if entries.is_empty() {
        return Err(meta.error("`autoretry_for(...)` needs at least one error type or name"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn error_of(tokens: TokenStream) -> String {
        match TaskAttr::parse(tokens) {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn parses_every_option() {
        let attr = TaskAttr::parse(quote!(
            name = "files.process",
            queue = "long-task",
            acks_late = true,
            soft_time_limit = "30m",
            time_limit = "35m",
            max_retries = 5,
            retry_backoff = true,
            retry_backoff_max = "10m",
            retry_jitter = false,
            autoretry_for(std::io::Error, "TimeoutError"),
            rate_limit = "100/m",
            expires = "1h",
            ignore_result = false,
            priority = 5,
            routing_key = "long.file",
            default_retry_delay = "30s",
            exchange = "tasks",
            skip_if_succeeded,
            crate = "::celeriac"
        ))
        .expect("valid");
        assert_eq!(
            attr.name.as_ref().map(LitStr::value).as_deref(),
            Some("files.process")
        );
        assert_eq!(attr.max_retries, Some(MaxRetries::Limited(5)));
        assert_eq!(
            attr.soft_time_limit.map(|s| s.value),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(attr.retry_backoff.map(|s| s.value), Some(RetryBackoff::On));
        assert_eq!(attr.autoretry_for.len(), 2);
        assert_eq!(attr.skip_if_succeeded, Some(true));
        assert_eq!(attr.priority, Some(5));
    }

    #[test]
    fn numbers_are_seconds_and_unlimited_retries_are_spelled_out() {
        let attr = TaskAttr::parse(quote!(
            expires = 90,
            time_limit = 1.5,
            max_retries = unlimited
        ))
        .expect("valid");
        assert_eq!(attr.expires, Some(Duration::from_secs(90)));
        assert_eq!(
            attr.time_limit.map(|s| s.value),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(attr.max_retries, Some(MaxRetries::Unlimited));
        assert!(error_of(quote!(max_retries = -1)).contains("unlimited"));
        assert!(error_of(quote!(max_retries = forever)).contains("unlimited"));
    }

    #[test]
    fn bad_literals_are_compile_errors() {
        assert!(error_of(quote!(soft_time_limit = "30 parsecs")).contains("invalid duration unit"));
        assert!(error_of(quote!(expires = "soon")).contains("invalid duration"));
        assert!(error_of(quote!(rate_limit = "100/week")).contains("invalid rate limit unit"));
        assert!(error_of(quote!(rate_limit = "fast")).contains("invalid rate limit"));
        assert!(error_of(quote!(priority = 300)).contains("0 to 255"));
        assert!(error_of(quote!(queue = "")).contains("must not be empty"));
        assert!(error_of(quote!(acks_late = "yes")).contains("expected boolean literal"));
    }

    #[test]
    fn unknown_and_duplicate_options_are_rejected() {
        let message = error_of(quote!(singleton = true));
        assert!(
            message.contains("unknown #[task] option `singleton`"),
            "{message}"
        );
        assert!(message.contains("soft_time_limit"), "{message}");
        assert!(error_of(quote!(queue = "a", queue = "b")).contains("duplicate"));
        assert!(error_of(quote!(autoretry_for = "x")).contains("autoretry_for("));
        assert!(error_of(quote!(autoretry_for())).contains("at least one"));
    }

    #[test]
    fn single_instance_options_parse_and_are_checked() {
        let attr = TaskAttr::parse(quote!(
            single_instance,
            lock_key = "customer_id, region",
            on_conflict = "wait",
            lock_wait = "30s",
            lock_retry_delay = "2s",
            lock_lease = "10s"
        ))
        .expect("valid");
        assert!(attr.is_single_instance());
        assert_eq!(
            attr.lock_key.map(|k| k.value),
            Some(vec!["customer_id".to_string(), "region".to_string()])
        );
        assert_eq!(attr.on_conflict.map(|c| c.value), Some(Conflict::Wait));
        assert_eq!(
            attr.lock_wait.map(|w| w.value),
            Some(Duration::from_secs(30))
        );
        assert!(TaskAttr::parse(quote!(single_instance = false)).is_ok());
        assert!(error_of(quote!(lock_key = "id")).contains("add `single_instance`"));
        assert!(
            error_of(quote!(single_instance = false, on_conflict = "retry"))
                .contains("add `single_instance`")
        );
        assert!(error_of(quote!(single_instance, on_conflict = "later")).contains("\"skip\""));
        assert!(
            error_of(quote!(single_instance, lock_wait = "5s")).contains("on_conflict = \"wait\"")
        );
        assert!(error_of(quote!(single_instance, lock_retry_delay = "5s")).contains("not retried"));
        assert!(error_of(quote!(single_instance, lock_lease = "100ms")).contains("at least"));
        assert!(error_of(quote!(single_instance, lock_key = "a,,b")).contains("not a name"));
        assert!(error_of(quote!(single_instance, lock_key = "a, a")).contains("twice"));
    }

    #[test]
    fn options_that_depend_on_each_other_are_checked() {
        assert!(error_of(quote!(retry_backoff_max = "10m")).contains("retry_backoff = true"));
        assert!(
            error_of(quote!(retry_backoff = false, retry_jitter = true)).contains("retry_backoff")
        );
        assert!(
            error_of(quote!(soft_time_limit = "10m", time_limit = "5m")).contains("longer than")
        );
        let attr =
            TaskAttr::parse(quote!(retry_backoff = "2s", retry_backoff_max = "1m")).expect("valid");
        assert_eq!(
            attr.retry_backoff.map(|b| b.value),
            Some(RetryBackoff::Base(Duration::from_secs(2)))
        );
    }
}
