//! Workflow continuations after a task's outcome: `link` callbacks and the next
//! chain step on success, the remaining chain steps' failures and `link_error`
//! errbacks on failure (PROTOCOL.md §4, in the order of Celery's `trace_task`), and
//! chord accounting for header tasks: the backend counts the parts (on Redis with
//! Celery's own algorithm, so Python and celeriac workers count together) and the
//! worker whose part completes the chord sends the body with the header results in
//! order, or fails it with Celery's `ChordError` when a header task failed.
//!
//! Continuations are sent through the worker's [`TaskSender`] (the `App`, so its
//! routes apply). A worker built without one cannot continue a workflow: it logs
//! that, and stores FAILURE for the chain steps that will never run, so a client
//! waiting on them does not hang.
//!
//! Errbacks are sent as messages with the failed task's id prepended to their
//! arguments (unless immutable). A Python worker calls an errback that takes
//! `(request, exc, traceback)` inline instead; celeriac cannot introspect Python
//! signatures, so such an errback, run by a Python worker, must accept `task_id`.

use std::sync::Arc;

use celeriac_backend::{ChordPart, ChordProgress};
use celeriac_core::{ExceptionInfo, Signature, TaskMessage, TaskMeta, TaskSender, TaskState};
use serde_json::Value;

use crate::apply::{apply, ApplyContext};
use crate::completer::Completion;
use crate::worker::Shared;

/// Sends the continuations of a successful task: its callbacks with the result
/// prepended, then the next chain step, then its chord part. Returns the result
/// tuples of what was sent, for the task's `children`.
pub(crate) async fn on_success(
    shared: &Arc<Shared>,
    message: &TaskMessage,
    value: &Value,
) -> Vec<Value> {
    // The continuation futures are large (they send messages); boxed, and only when
    // there is something to send, they do not weigh on every task's future.
    let embed = &message.embed;
    let links = embed.callbacks.as_ref().is_some_and(|c| !c.is_empty())
        || embed.chain.as_ref().is_some_and(|c| !c.is_empty());
    let children = if links {
        Box::pin(send_continuations(shared, message, value)).await
    } else {
        Vec::new()
    };
    if embed.chord.is_some() {
        Box::pin(on_chord_part(shared, message, TaskState::Success, value)).await;
    }
    children
}

async fn send_continuations(
    shared: &Arc<Shared>,
    message: &TaskMessage,
    value: &Value,
) -> Vec<Value> {
    let callbacks = message.embed.callbacks.as_deref().unwrap_or_default();
    let chain = message.embed.chain.as_deref().unwrap_or_default();
    if callbacks.is_empty() && chain.is_empty() {
        return Vec::new();
    }
    let Some(sender) = shared.sender.as_ref() else {
        let exception = no_sender_exception();
        tracing::error!(id = %message.headers.id, "the task has callbacks or chain steps but this worker has no sender; they fail");
        fail_chain(shared, message, &exception, None);
        return Vec::new();
    };
    let mut children = Vec::new();
    for callback in callbacks {
        match send(shared, sender.as_ref(), message, callback, Some(value), &[]).await {
            Ok(child) => children.push(child),
            Err(error) => {
                tracing::error!(id = %message.headers.id, callback = %callback.task, %error, "sending a link callback failed")
            }
        }
    }
    if let Some((next, rest)) = chain.split_last() {
        match send(shared, sender.as_ref(), message, next, Some(value), rest).await {
            Ok(child) => children.push(child),
            Err(error) => {
                tracing::error!(id = %message.headers.id, next = %next.task, %error, "sending the next chain step failed; the rest of the chain fails");
                let exception = ExceptionInfo::new(
                    "ChainError",
                    "celery.exceptions",
                    format!("sending chain step {} failed: {error}", next.task),
                );
                fail_chain(shared, message, &exception, None);
            }
        }
    }
    children
}

/// After a failure: stores the same FAILURE for every remaining chain step (so
/// waiting clients do not hang), reports the chord part, and sends the errbacks with
/// the failed task's id.
pub(crate) async fn on_failure(
    shared: &Arc<Shared>,
    message: &TaskMessage,
    exception: &ExceptionInfo,
    traceback: Option<&str>,
) {
    fail_chain(shared, message, exception, traceback);
    if message.embed.chord.is_some() {
        Box::pin(on_chord_part(
            shared,
            message,
            TaskState::Failure,
            &exception.to_value(),
        ))
        .await;
    }
    let errbacks = message.embed.errbacks.as_deref().unwrap_or_default();
    if errbacks.is_empty() {
        return;
    }
    let Some(sender) = shared.sender.as_ref() else {
        tracing::error!(id = %message.headers.id, "the task has errbacks but this worker has no sender; they are not called");
        return;
    };
    let failed_id = Value::String(message.headers.id.clone());
    for errback in errbacks {
        if let Err(error) = Box::pin(send(
            shared,
            sender.as_ref(),
            message,
            errback,
            Some(&failed_id),
            &[],
        ))
        .await
        {
            tracing::error!(id = %message.headers.id, errback = %errback.task, %error, "sending an errback failed");
        }
    }
}

/// Stores FAILURE for each remaining chain step that has a preassigned id.
fn fail_chain(
    shared: &Arc<Shared>,
    message: &TaskMessage,
    exception: &ExceptionInfo,
    traceback: Option<&str>,
) {
    for step in message.embed.chain.as_deref().unwrap_or_default() {
        let Some(id) = step.task_id() else { continue };
        let mut meta = TaskMeta::new(id.to_string(), TaskState::Failure, exception.to_value());
        meta.traceback = traceback.map(str::to_string);
        meta.parent_id = Some(message.headers.id.clone());
        shared.complete(Completion::Store(Box::new(meta)));
    }
}

fn no_sender_exception() -> ExceptionInfo {
    ExceptionInfo::new(
        "ChainError",
        "celery.exceptions",
        "the worker that ran the previous step cannot send tasks (no sender configured)",
    )
}

/// The apply context of continuations sent by the task of `parent`.
fn context<'a>(
    shared: &'a Shared,
    sender: &'a dyn TaskSender,
    parent: &TaskMessage,
) -> ApplyContext<'a> {
    ApplyContext {
        sender,
        backend: shared.backend.as_deref(),
        parent_id: Some(parent.headers.id.clone()),
        root_id: Some(
            parent
                .headers
                .root_id
                .clone()
                .unwrap_or_else(|| parent.headers.id.clone()),
        ),
        chord_expires: shared.config.result_expires,
    }
}

/// Sends one signature (any type) as a child of `parent`, with `rest` (chain steps in
/// embed order, next last) continuing after it. Returns its result tuple.
async fn send(
    shared: &Shared,
    sender: &dyn TaskSender,
    parent: &TaskMessage,
    signature: &Signature,
    parent_result: Option<&Value>,
    rest: &[Signature],
) -> Result<Value, String> {
    let forward: Vec<Signature> = rest.iter().rev().cloned().collect();
    let ctx = context(shared, sender, parent);
    apply(&ctx, signature, parent_result, forward)
        .await
        .map(|applied| applied.tuple)
}

/// How long the chord dispatch claim is held before publishing (Celery: 10 s).
const CHORD_CLAIM: std::time::Duration = std::time::Duration::from_secs(10);

/// After a chord header task reached a final state: reports its part to the
/// backend and, when it completed the chord, dispatches the body (or fails it if a
/// header task failed). Nothing for tasks that are not chord members.
pub(crate) async fn on_chord_part(
    shared: &Arc<Shared>,
    message: &TaskMessage,
    state: TaskState,
    result: &Value,
) {
    let (Some(body), Some(group_id)) = (&message.embed.chord, &message.headers.group) else {
        return;
    };
    let Some(backend) = shared.backend.as_ref() else {
        tracing::error!(id = %message.headers.id, %group_id, "a chord header task ran on a worker without a result backend; the chord body never runs");
        return;
    };
    let part = ChordPart::new(
        group_id.clone(),
        message.headers.id.clone(),
        message.headers.group_index,
        state,
        result.clone(),
    );
    let progress = match backend
        .chord_part_return(&part, shared.config.result_expires, CHORD_CLAIM)
        .await
    {
        Ok(progress) => progress,
        Err(error) => {
            tracing::error!(id = %message.headers.id, %group_id, %error, "recording the chord part failed; the chord body may never run");
            return;
        }
    };
    let ChordProgress::Complete { claim, parts } = progress else {
        return;
    };
    let failed = parts
        .iter()
        .find(|p| matches!(p.state, TaskState::Failure | TaskState::Revoked));
    match failed {
        Some(dependency) => {
            let exception = ExceptionInfo::new(
                "ChordError",
                "celery.exceptions",
                format!(
                    "Dependency {} raised {}",
                    dependency.task_id,
                    python_repr_exception(&dependency.result)
                ),
            );
            tracing::warn!(%group_id, dependency = %dependency.task_id, "a chord header task failed; the chord body fails");
            fail_signature(shared, message, body, &exception).await;
        }
        None => {
            let results = Value::Array(parts.into_iter().map(|p| p.result).collect());
            match backend
                .chord_extend_claim(group_id, &claim, CHORD_CLAIM)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%group_id, "chord body not sent: the dispatch claim was lost to another worker");
                    return;
                }
                Err(error) => {
                    tracing::error!(%group_id, %error, "extending the chord claim failed; not sending the body");
                    return;
                }
            }
            let sent = match shared.sender.as_ref() {
                Some(sender) => send(shared, sender.as_ref(), message, body, Some(&results), &[])
                    .await
                    .map(|_| ()),
                None => Err("this worker has no sender".to_string()),
            };
            if let Err(error) = sent {
                tracing::error!(%group_id, %error, "sending the chord body failed");
                let exception = ExceptionInfo::new(
                    "ChordError",
                    "celery.exceptions",
                    format!("Callback error: {error}"),
                );
                fail_signature(shared, message, body, &exception).await;
            }
        }
    }
    match backend.chord_finish(group_id, &claim).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(%group_id, "the chord claim was lost before cleanup; its data is left to expire")
        }
        Err(error) => tracing::warn!(%group_id, %error, "cleaning up the chord failed"),
    }
}

/// Fails a signature that will not run: FAILURE stored under its preassigned id,
/// and its `link_error` errbacks sent with that id.
async fn fail_signature(
    shared: &Arc<Shared>,
    parent: &TaskMessage,
    signature: &Signature,
    exception: &ExceptionInfo,
) {
    let options = signature.send_options();
    let Some(id) = options.task_id.clone() else {
        return;
    };
    let mut meta = TaskMeta::new(id.clone(), TaskState::Failure, exception.to_value());
    meta.group_id = options.group_id.clone();
    meta.parent_id = Some(parent.headers.id.clone());
    shared.complete(Completion::Store(Box::new(meta)));
    let errbacks = options.embed.and_then(|e| e.errbacks).unwrap_or_default();
    let Some(sender) = shared.sender.as_ref() else {
        return;
    };
    let failed_id = Value::String(id);
    for errback in &errbacks {
        if let Err(error) = send(
            shared,
            sender.as_ref(),
            parent,
            errback,
            Some(&failed_id),
            &[],
        )
        .await
        {
            tracing::error!(errback = %errback.task, %error, "sending an errback failed");
        }
    }
}

/// A Python-style repr of a stored exception dict (`ValueError('bad')`), for
/// Celery's `ChordError` message.
fn python_repr_exception(value: &Value) -> String {
    match ExceptionInfo::from_value(value) {
        Some(info) => {
            let args: Vec<String> = info
                .exc_message
                .iter()
                .map(|arg| match arg {
                    Value::String(s) => format!("'{}'", s.replace('\'', "\\'")),
                    other => other.to_string(),
                })
                .collect();
            format!("{}({})", info.exc_type, args.join(", "))
        }
        None => value.to_string(),
    }
}
