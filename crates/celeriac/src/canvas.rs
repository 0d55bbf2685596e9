//! Workflows from Rust: chains, groups and chords of signatures, encoded exactly as
//! Celery encodes them (PROTOCOL.md §4), so any mix of celeriac and Python workers
//! runs them.
//!
//! ```no_run
//! # async fn demo(app: &celeriac::App) -> Result<(), celeriac::Error> {
//! use celeriac::canvas::{chain, chord, group, sig};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! // add(1, 2) | mul(10): the result of each step is prepended to the next one's args.
//! let total = app
//!     .apply(chain([sig("tasks.add", [json!(1), json!(2)]), sig("tasks.mul", [json!(10)])]))
//!     .await?
//!     .get(Duration::from_secs(10))
//!     .await?;
//! assert_eq!(total, json!(30));
//!
//! // Ten additions in parallel, then their sum.
//! let header = (0..10).map(|i| sig("tasks.add", [json!(i), json!(i)]));
//! let sum = app.apply(chord(header, sig("tasks.tsum", []))).await?;
//!
//! // A group: results in order.
//! let squares = app
//!     .apply_group(group((0..5).map(|i| sig("tasks.mul", [json!(i), json!(i)]))))
//!     .await?
//!     .get(Duration::from_secs(10))
//!     .await?;
//! # let _ = (sum, squares); Ok(()) }
//! ```
//!
//! # Typed chains
//!
//! Tasks declared with `#[task]` give typed signatures: `add::s(1, 2)?` is the whole
//! call and `mul::partial(10)?` the call without its first argument, which the
//! previous step's result fills. [`Chain::then`] only accepts a step whose first
//! argument has the previous step's result type, so a chain that would pass a
//! `String` where an `i64` is expected does not compile:
//!
//! ```no_run
//! use celeriac::canvas::Chain;
//! use celeriac::prelude::*;
//!
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> TaskResult<i64> { Ok(x + y) }
//! #[task(name = "tasks.mul")]
//! async fn mul(x: i64, y: i64) -> TaskResult<i64> { Ok(x * y) }
//!
//! # async fn demo(app: &App) -> Result<(), Error> {
//! let product: i64 = Chain::start(add::s(1, 2)?) // Chain<i64>
//!     .then(mul::partial(10)?)                    // takes the i64: Chain<i64>
//!     .apply(app)
//!     .await?                                     // AsyncResult<i64>
//!     .get(std::time::Duration::from_secs(10))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The same chain with a step whose first argument is a `String` is refused by the
//! compiler:
//!
//! ```compile_fail
//! use celeriac::canvas::Chain;
//! use celeriac::prelude::*;
//!
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> TaskResult<i64> { Ok(x + y) }
//! #[task(name = "tasks.greet")]
//! async fn greet(name: String, greeting: String) -> TaskResult<String> { Ok(greeting + &name) }
//!
//! # async fn demo(app: &App) -> Result<(), Error> {
//! let _chain = Chain::start(add::s(1, 2)?).then(greet::partial("hi".to_string())?);
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use celeriac_core::Signature;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{App, AsyncResult, Error};

pub use celeriac_worker::apply::{chain_signature, chord_signature, group_signature};

/// A signature of task `name` with positional arguments.
pub fn sig(name: &str, args: impl IntoIterator<Item = Value>) -> Signature {
    Signature::new(name, args.into_iter().collect())
}

/// An immutable signature: the previous step's result is not prepended to its
/// arguments (Celery's `.si()`).
pub fn si(name: &str, args: impl IntoIterator<Item = Value>) -> Signature {
    let mut signature = sig(name, args);
    signature.immutable = true;
    signature
}

/// A chain: each step receives the previous step's result as its first argument
/// (unless immutable). A group followed by a step becomes a chord.
pub fn chain(steps: impl IntoIterator<Item = Signature>) -> Signature {
    chain_signature(steps.into_iter().collect())
}

/// A group: its members run in parallel; its result is their results in order.
pub fn group(members: impl IntoIterator<Item = Signature>) -> Signature {
    group_signature(members.into_iter().collect())
}

/// A chord: the header tasks run in parallel, then `body` runs once with the list of
/// their results (in header order) as its first argument.
pub fn chord(header: impl IntoIterator<Item = Signature>, body: Signature) -> Signature {
    chord_signature(header.into_iter().collect(), body)
}

/// `celery.map`: one task that calls `task` for each item (one argument each) in
/// the worker and returns the list of results (Celery's `xmap`).
pub fn xmap(task: Signature, items: impl IntoIterator<Item = Value>) -> Signature {
    builtin_map("celery.map", task, items.into_iter().collect())
}

/// `celery.starmap`: like [`xmap`], each item being the argument list (Celery's
/// `xstarmap`).
pub fn xstarmap(task: Signature, items: impl IntoIterator<Item = Vec<Value>>) -> Signature {
    let items = items.into_iter().map(Value::Array).collect();
    builtin_map("celery.starmap", task, items)
}

/// Splits the argument lists `items` into chunks of `size` and runs each chunk as
/// one `celery.starmap` task, all in a group (Celery's `chunks(...).group()`). The
/// group's result is one list of results per chunk.
pub fn chunks(
    task: Signature,
    items: impl IntoIterator<Item = Vec<Value>>,
    size: usize,
) -> Signature {
    let items: Vec<Vec<Value>> = items.into_iter().collect();
    let members = items
        .chunks(size.max(1))
        .map(|chunk| xstarmap(task.clone(), chunk.iter().cloned()));
    group(members)
}

fn builtin_map(name: &str, task: Signature, items: Vec<Value>) -> Signature {
    let mut map = Signature::new(name, Vec::new());
    map.kwargs.insert(
        "task".into(),
        serde_json::to_value(task).unwrap_or(Value::Null),
    );
    map.kwargs.insert("it".into(), Value::Array(items));
    map.immutable = true;
    map
}

/// A signature with types: `Out` is its result, `In` the previous step's result it
/// takes as its first argument in a chain (`()` when it takes nothing). Made by the
/// `s` and `partial` functions `#[task]` generates.
pub struct TypedSignature<In, Out> {
    signature: Signature,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> TypedSignature<In, Out> {
    /// Wraps a signature whose argument and result types the caller vouches for.
    pub fn new(signature: Signature) -> TypedSignature<In, Out> {
        TypedSignature {
            signature,
            _types: PhantomData,
        }
    }

    /// The untyped signature.
    pub fn into_signature(self) -> Signature {
        self.signature
    }

    /// Edits the untyped signature (options such as the queue).
    pub fn map(mut self, edit: impl FnOnce(Signature) -> Signature) -> Self {
        self.signature = edit(self.signature);
        self
    }
}

impl<In, Out> std::fmt::Debug for TypedSignature<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedSignature")
            .field(&self.signature)
            .finish()
    }
}

/// A chain whose steps' argument types were checked at compile time; `Out` is the
/// last step's result type.
pub struct Chain<Out> {
    steps: Vec<Signature>,
    _out: PhantomData<fn() -> Out>,
}

impl<Out> Chain<Out> {
    /// A chain starting with a whole call.
    pub fn start(first: TypedSignature<(), Out>) -> Chain<Out> {
        Chain {
            steps: vec![first.signature],
            _out: PhantomData,
        }
    }

    /// Appends a step that receives this chain's result as its first argument.
    pub fn then<Next>(mut self, step: TypedSignature<Out, Next>) -> Chain<Next> {
        self.steps.push(step.signature);
        Chain {
            steps: self.steps,
            _out: PhantomData,
        }
    }

    /// Appends a whole call that ignores this chain's result (an immutable step).
    pub fn then_ignoring<Next>(mut self, step: TypedSignature<(), Next>) -> Chain<Next> {
        let mut signature = step.signature;
        signature.immutable = true;
        self.steps.push(signature);
        Chain {
            steps: self.steps,
            _out: PhantomData,
        }
    }

    /// The chain as an untyped signature (to nest it or send it by hand).
    pub fn into_signature(self) -> Signature {
        chain(self.steps)
    }
}

impl<Out: DeserializeOwned> Chain<Out> {
    /// Sends the chain; returns the typed handle of its last step's result.
    pub async fn apply(self, app: &App) -> Result<AsyncResult<Out>, Error> {
        let last = app.apply(self.into_signature()).await?;
        Ok(app.result(last.id().to_string()))
    }
}

/// Options on any signature, builder style.
pub trait SignatureExt: Sized {
    /// Sends this step to `queue`.
    fn queue(self, queue: &str) -> Self;
    /// Calls `callback` with this task's result when it succeeds (`link`).
    fn link(self, callback: Signature) -> Self;
    /// Calls `errback` with this task's id when it fails (`link_error`).
    fn link_error(self, errback: Signature) -> Self;
    /// Makes the signature immutable (no parent result prepended).
    fn immutable(self) -> Self;
    /// Sets an `apply_async` option by its Celery name (`countdown`, `priority`, ...).
    fn option(self, name: &str, value: Value) -> Self;
}

impl SignatureExt for Signature {
    fn queue(self, queue: &str) -> Self {
        self.option("queue", Value::String(queue.to_string()))
    }

    fn link(mut self, callback: Signature) -> Self {
        push_link(&mut self, "link", callback);
        self
    }

    fn link_error(mut self, errback: Signature) -> Self {
        push_link(&mut self, "link_error", errback);
        self
    }

    fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    fn option(mut self, name: &str, value: Value) -> Self {
        self.options.insert(name.to_string(), value);
        self
    }
}

fn push_link(signature: &mut Signature, option: &str, linked: Signature) {
    let linked = serde_json::to_value(linked).unwrap_or(Value::Null);
    match signature.options.get_mut(option) {
        Some(Value::Array(list)) => list.push(linked),
        Some(single @ Value::Object(_)) => {
            let first = single.take();
            *single = Value::Array(vec![first, linked]);
        }
        _ => {
            signature
                .options
                .insert(option.to_string(), Value::Array(vec![linked]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn links_accumulate_and_become_the_embed() {
        let s = sig("t.a", [json!(1)])
            .link(sig("t.b", []))
            .link(si("t.c", []))
            .link_error(sig("t.err", []))
            .queue("short-task");
        let options = s.send_options();
        let embed = options.embed.expect("embed");
        let callbacks = embed.callbacks.expect("callbacks");
        assert_eq!(callbacks.len(), 2);
        assert!(callbacks[1].immutable);
        assert_eq!(embed.errbacks.expect("errbacks")[0].task, "t.err");
        assert_eq!(options.queue.as_deref(), Some("short-task"));
    }

    #[test]
    fn builders_write_celery_subtask_types() {
        let c = chord([sig("t.a", [])], sig("t.sum", []));
        assert_eq!(c.subtask_type.as_deref(), Some("chord"));
        assert_eq!(c.task, "celery.chord");
        let g = group([sig("t.a", [])]);
        assert_eq!(g.kwargs["tasks"][0]["task"], json!("t.a"));
        assert_eq!(chain([g]).subtask_type.as_deref(), Some("chain"));
    }
}
