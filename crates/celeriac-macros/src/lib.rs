//! The `#[task]` attribute of celeriac. Use it through the facade:
//! `use celeriac::prelude::*;` (or `celeriac::task`).
//!
//! # Layout
//!
//! - `attr`: the attribute's options, parsed and validated at compile time (a bad
//!   duration or rate limit is a spanned error, not a runtime surprise).
//! - `grammar`: compile-time copies of the core's duration and rate-limit grammars.
//! - `expand`: the signature checks and the generated code: for `fn foo`, a unit
//!   struct `foo` implementing `Task`, with `foo::delay`, `foo::apply_async`,
//!   `foo::signature`, `foo::call` and `foo::NAME`.
//!
//! The generated code reaches the runtime only through `celeriac::__private`
//! (`celeriac_core`, `serde_json`, `tokio`, `ArgBinder`), so a user crate depends on
//! `celeriac` alone.

mod attr;
mod expand;
mod grammar;

use proc_macro::TokenStream;

#[doc = include_str!("../docs/task.md")]
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}

/// Checks that must fail to compile; `cargo test --doc -p celeriac-macros` runs them.
///
/// A malformed duration:
///
/// ```compile_fail
/// use celeriac::prelude::*;
/// #[task(soft_time_limit = "30 parsecs")]
/// async fn f() -> TaskResult<()> { Ok(()) }
/// ```
///
/// A borrowed argument:
///
/// ```compile_fail
/// use celeriac::prelude::*;
/// #[task]
/// async fn f(text: &str) -> TaskResult<()> { Ok(()) }
/// ```
///
/// An error type that does not convert into `TaskError`:
///
/// ```compile_fail
/// use celeriac::prelude::*;
/// struct NotAnError;
/// #[task]
/// fn f() -> Result<(), NotAnError> { Ok(()) }
/// ```
///
/// A result that cannot be serialized:
///
/// ```compile_fail
/// use celeriac::prelude::*;
/// struct Opaque;
/// #[task]
/// fn f() -> TaskResult<Opaque> { Ok(Opaque) }
/// ```
///
/// The same items without the mistakes compile:
///
/// ```
/// use celeriac::prelude::*;
/// #[task(soft_time_limit = "30s")]
/// async fn f(text: String) -> TaskResult<()> { Ok(()) }
/// #[task]
/// fn g() -> Result<u64, std::io::Error> { Ok(1) }
/// ```
#[cfg(doctest)]
#[allow(dead_code)]
struct CompileFail;
