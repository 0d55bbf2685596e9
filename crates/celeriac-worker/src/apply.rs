//! Applying a signature: turning a plain task, chain, group or chord signature into
//! the messages Celery would send for it (PROTOCOL.md §4). Used by the worker for
//! workflow continuations and by clients (`celeriac::canvas`) to start workflows, so
//! both encode workflows the same way.
//!
//! - **plain**: one message; the parent's result (if any) is prepended to its
//!   arguments unless the signature is immutable.
//! - **chain**: every step gets a task id up front; a group followed by another step
//!   becomes a chord of the two (as in Celery); the first step is sent with the
//!   rest in `embed.chain`, reversed.
//! - **group**: one message per member, sharing the group id, `group_index` 0..n;
//!   a member that is itself a chain or group is applied on its own (its result
//!   stands for it).
//! - **chord**: the chord size is recorded in the result backend, then each header
//!   task is sent as a group member carrying the body in `embed.chord`. Steps that
//!   follow a chord in a chain travel with its body (the body becomes a chain).
//!   Header members are plain tasks or chains (a chain's last step carries the
//!   membership and the body); a group inside a chord header is refused with a
//!   clear error.

use celeriac_backend::ResultBackend;
use celeriac_core::canvas::group_members;
use celeriac_core::{Embed, Signature, TaskSender};
use serde_json::{json, Map, Value};

/// What applying needs: a sender (the `App`), the result backend for chords, and
/// the lineage of the task that sends (none for a client).
pub struct ApplyContext<'a> {
    /// Publishes the messages (routes apply).
    pub sender: &'a dyn TaskSender,
    /// Where chord sizes are recorded.
    pub backend: Option<&'a dyn ResultBackend>,
    /// The sending task's id (`parent_id` of what is sent).
    pub parent_id: Option<String>,
    /// The workflow's root id.
    pub root_id: Option<String>,
    /// Expiry of chord bookkeeping.
    pub chord_expires: Option<std::time::Duration>,
}

/// What was sent for one signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The id whose result is the signature's result: the task's, the last chain
    /// step's, the group's, or the chord body's.
    pub id: String,
    /// Ids of a group's members (empty otherwise).
    pub members: Vec<String>,
    /// The result tuple Celery lists in a parent's `children`.
    pub tuple: Value,
}

/// The signature type names Celery uses (`subtask_type`).
const CHAIN: &str = "chain";
const GROUP: &str = "group";
const CHORD: &str = "chord";

/// A new task id.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Gives every task in `signature` a task id (kept when it has one), so the ids of a
/// workflow are known before anything runs. Returns the signature's result id.
pub fn freeze(signature: &mut Signature) -> String {
    match signature.subtask_type.as_deref() {
        Some(CHAIN) => {
            let mut steps = celeriac_core::canvas::signatures(signature.kwargs.get("tasks"));
            let mut last = None;
            for step in &mut steps {
                last = Some(freeze(step));
            }
            signature.kwargs.insert("tasks".into(), to_values(&steps));
            last.unwrap_or_else(|| ensure_id(signature))
        }
        Some(GROUP) => {
            let group_id = ensure_id(signature);
            let mut members = group_members(signature);
            for member in &mut members {
                freeze(member);
            }
            signature.kwargs.insert("tasks".into(), to_values(&members));
            group_id
        }
        Some(CHORD) => {
            let Some(mut body) = chord_body(signature) else {
                return ensure_id(signature);
            };
            let id = freeze(&mut body);
            signature.kwargs.insert("body".into(), to_value(&body));
            id
        }
        _ => ensure_id(signature),
    }
}

fn ensure_id(signature: &mut Signature) -> String {
    if let Some(id) = signature.task_id() {
        return id.to_string();
    }
    let id = new_id();
    signature
        .options
        .insert("task_id".into(), Value::String(id.clone()));
    id
}

fn to_value(signature: &Signature) -> Value {
    serde_json::to_value(signature).unwrap_or(Value::Null)
}

fn to_values(signatures: &[Signature]) -> Value {
    Value::Array(signatures.iter().map(to_value).collect())
}

/// A chord signature's body.
fn chord_body(chord: &Signature) -> Option<Signature> {
    chord
        .kwargs
        .get("body")
        .and_then(|body| serde_json::from_value(body.clone()).ok())
}

/// A chord signature's header tasks (`kwargs.header`: a group or a list).
fn chord_header(chord: &Signature) -> Vec<Signature> {
    match chord.kwargs.get("header") {
        Some(Value::Array(_)) => celeriac_core::canvas::signatures(chord.kwargs.get("header")),
        Some(header @ Value::Object(_)) => serde_json::from_value::<Signature>(header.clone())
            .map(|group| group_members(&group))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A chord signature of `header` members and `body`, in Celery's encoding.
pub fn chord_signature(header: Vec<Signature>, body: Signature) -> Signature {
    let mut chord = Signature::new("celery.chord", Vec::new());
    chord.subtask_type = Some(CHORD.into());
    chord
        .kwargs
        .insert("header".into(), to_value(&group_signature(header)));
    chord.kwargs.insert("body".into(), to_value(&body));
    chord
        .kwargs
        .insert("kwargs".into(), Value::Object(Map::new()));
    chord
}

/// A group signature of `members`, in Celery's encoding.
pub fn group_signature(members: Vec<Signature>) -> Signature {
    let mut group = Signature::new("celery.group", Vec::new());
    group.subtask_type = Some(GROUP.into());
    group.kwargs.insert("tasks".into(), to_values(&members));
    group
}

/// A chain signature of `steps`, in Celery's encoding.
pub fn chain_signature(steps: Vec<Signature>) -> Signature {
    let mut chain = Signature::new("celery.chain", Vec::new());
    chain.subtask_type = Some(CHAIN.into());
    chain.kwargs.insert("tasks".into(), to_values(&steps));
    chain
}

/// Chain steps with every group that is followed by another step merged with it
/// into a chord (Celery's upgrade).
fn upgrade_chain(steps: Vec<Signature>) -> Vec<Signature> {
    let mut upgraded: Vec<Signature> = Vec::with_capacity(steps.len());
    for step in steps {
        let after_group = upgraded
            .last()
            .is_some_and(|previous| previous.subtask_type.as_deref() == Some(GROUP));
        match upgraded.pop() {
            Some(group) if after_group => {
                let mut chord = chord_signature(group_members(&group), step);
                if let Some(id) = group.task_id() {
                    chord
                        .options
                        .insert("group_id".into(), Value::String(id.to_string()));
                }
                upgraded.push(chord);
            }
            previous => {
                upgraded.extend(previous);
                upgraded.push(step);
            }
        }
    }
    upgraded
}

/// Sends `signature` (any type) as a child of the context's parent, with
/// `parent_result` prepended where Celery prepends it, and `chain_rest` (forward
/// order) continuing after it. Errors are messages for logs and stored failures.
pub async fn apply(
    ctx: &ApplyContext<'_>,
    signature: &Signature,
    parent_result: Option<&Value>,
    chain_rest: Vec<Signature>,
) -> Result<Applied, String> {
    let mut signature = signature.clone();
    freeze(&mut signature);
    match signature.subtask_type.as_deref() {
        None => {
            let id = send_plain(ctx, &signature, parent_result, chain_rest, None).await?;
            Ok(Applied {
                tuple: json!([[id, null], null]),
                id,
                members: Vec::new(),
            })
        }
        Some(CHAIN) => {
            let mut steps = upgrade_chain(celeriac_core::canvas::signatures(
                signature.kwargs.get("tasks"),
            ));
            if steps.is_empty() {
                return Err("an empty chain".into());
            }
            steps.extend(chain_rest);
            let first = steps.remove(0);
            let last_id = match steps.last() {
                Some(last) => result_id(last),
                None => result_id(&first),
            };
            let applied = Box::pin(apply(ctx, &first, parent_result, steps)).await?;
            Ok(Applied {
                id: last_id,
                ..applied
            })
        }
        Some(GROUP) => {
            if !chain_rest.is_empty() {
                // A group followed by more steps is a chord.
                let mut rest = chain_rest;
                let next = rest.remove(0);
                let chord = chord_signature(group_members(&signature), next);
                return Box::pin(apply(ctx, &chord, parent_result, rest)).await;
            }
            let group_id = signature
                .task_id()
                .map(str::to_string)
                .unwrap_or_else(new_id);
            let members = group_members(&signature);
            let mut ids = Vec::with_capacity(members.len());
            let mut tuples = Vec::with_capacity(members.len());
            for (index, member) in members.iter().enumerate() {
                if !member.is_plain() {
                    // A nested workflow (a chain or group inside the group): its own
                    // result stands for it, as in Celery's nested GroupResult.
                    let nested = Box::pin(apply(ctx, member, parent_result, Vec::new())).await?;
                    tuples.push(nested.tuple);
                    ids.push(nested.id);
                    continue;
                }
                let membership = (group_id.as_str(), index, None);
                let id = send_member(ctx, member, parent_result, membership).await?;
                tuples.push(json!([[id, null], null]));
                ids.push(id);
            }
            Ok(Applied {
                tuple: json!([[group_id, null], tuples]),
                id: group_id,
                members: ids,
            })
        }
        Some(CHORD) => {
            let header = chord_header(&signature);
            let Some(mut body) = chord_body(&signature) else {
                return Err("a chord without a body".into());
            };
            if !chain_rest.is_empty() {
                let mut steps = vec![body];
                steps.extend(chain_rest);
                body = chain_signature(steps);
                freeze(&mut body);
            }
            let body_id = result_id(&body);
            let group_id = signature
                .options
                .get("group_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(new_id);
            body.options
                .insert("group_id".into(), Value::String(group_id.clone()));
            if header.is_empty() {
                // Celery calls the body at once with an empty list.
                let applied = Box::pin(apply(ctx, &body, Some(&json!([])), Vec::new())).await?;
                return Ok(applied);
            }
            if let Some(nested) = header
                .iter()
                .find(|member| !member.is_plain() && member.subtask_type.as_deref() != Some(CHAIN))
            {
                return Err(format!(
                    "a {} inside a chord header is not supported yet (plain tasks and chains are)",
                    nested.subtask_type.as_deref().unwrap_or("canvas")
                ));
            }
            let backend = ctx
                .backend
                .ok_or("a chord needs a result backend to count its header")?;
            backend
                .chord_set_size(&group_id, header.len() as u64, ctx.chord_expires)
                .await
                .map_err(|e| format!("recording the chord size failed: {e}"))?;
            for (index, member) in header.iter().enumerate() {
                if member.subtask_type.as_deref() == Some(CHAIN) {
                    // The chain's last step is the chord member: it carries the
                    // membership and the body (Celery's encoding), the others run first.
                    let chained = chain_as_chord_member(member, &group_id, index, &body)?;
                    Box::pin(apply(ctx, &chained, parent_result, Vec::new())).await?;
                    continue;
                }
                let membership = (group_id.as_str(), index, Some(&body));
                send_member(ctx, member, parent_result, membership).await?;
            }
            Ok(Applied {
                tuple: json!([[body_id, null], null]),
                id: body_id,
                members: Vec::new(),
            })
        }
        Some(other) => Err(format!("{other} signatures are not supported yet")),
    }
}

/// A chain whose last step reports to chord `group_id` as member `index`.
fn chain_as_chord_member(
    chain: &Signature,
    group_id: &str,
    index: usize,
    body: &Signature,
) -> Result<Signature, String> {
    let mut steps = celeriac_core::canvas::signatures(chain.kwargs.get("tasks"));
    let Some(last) = steps.last_mut() else {
        return Err("an empty chain in a chord header".into());
    };
    if !last.is_plain() {
        return Err("a chain in a chord header must end with a plain task".into());
    }
    last.options
        .insert("group_id".into(), Value::String(group_id.to_string()));
    last.options
        .insert("group_index".into(), Value::from(index));
    last.options.insert("chord".into(), to_value(body));
    Ok(chain_signature(steps))
}

/// The result id of a frozen signature.
fn result_id(signature: &Signature) -> String {
    let mut copy = signature.clone();
    freeze(&mut copy)
}

/// Sends one group or chord header member (a plain task).
async fn send_member(
    ctx: &ApplyContext<'_>,
    member: &Signature,
    parent_result: Option<&Value>,
    (group_id, index, chord): (&str, usize, Option<&Signature>),
) -> Result<String, String> {
    if !member.is_plain() {
        return Err(format!(
            "a {} inside a chord header is not supported yet (only plain tasks are)",
            member.subtask_type.as_deref().unwrap_or("canvas")
        ));
    }
    let mut member = member.clone();
    member
        .options
        .insert("group_id".into(), Value::String(group_id.to_string()));
    member
        .options
        .insert("group_index".into(), Value::from(index));
    send_plain(ctx, &member, parent_result, Vec::new(), chord.cloned()).await
}

async fn send_plain(
    ctx: &ApplyContext<'_>,
    signature: &Signature,
    parent_result: Option<&Value>,
    chain_rest: Vec<Signature>,
    chord: Option<Signature>,
) -> Result<String, String> {
    let mut options = signature.send_options();
    if let Some(parent) = &ctx.parent_id {
        options.parent_id = Some(parent.clone());
    }
    if let Some(root) = ctx.root_id.clone().or_else(|| ctx.parent_id.clone()) {
        options.root_id = Some(root);
    }
    if !chain_rest.is_empty() || chord.is_some() || ctx.parent_id.is_some() {
        let embed = options.embed.get_or_insert_with(Embed::default);
        if !chain_rest.is_empty() || ctx.parent_id.is_some() {
            let mut reversed = chain_rest;
            reversed.reverse();
            embed.chain = Some(reversed);
        }
        if chord.is_some() {
            embed.chord = chord;
        }
    }
    sender_send(ctx.sender, signature, parent_result, options).await
}

async fn sender_send(
    sender: &dyn TaskSender,
    signature: &Signature,
    parent_result: Option<&Value>,
    options: celeriac_core::SendOptions,
) -> Result<String, String> {
    sender
        .send_task(
            &signature.task,
            signature.args_after(parent_result),
            signature.kwargs.clone(),
            options,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezing_gives_every_step_an_id_and_returns_the_result_id() {
        let mut chain = chain_signature(vec![
            Signature::new("a", vec![]),
            group_signature(vec![
                Signature::new("b", vec![]),
                Signature::new("c", vec![]),
            ]),
        ]);
        let id = freeze(&mut chain);
        let steps = celeriac_core::canvas::signatures(chain.kwargs.get("tasks"));
        assert!(steps[0].task_id().is_some());
        assert_eq!(
            steps[1].task_id(),
            Some(id.as_str()),
            "a chain's result is its last step's"
        );
        let members = group_members(&steps[1]);
        assert!(members.iter().all(|m| m.task_id().is_some()));
        // Freezing again keeps the ids.
        assert_eq!(freeze(&mut chain), id);
    }

    #[test]
    fn a_group_followed_by_a_step_becomes_a_chord() {
        let steps = upgrade_chain(vec![
            Signature::new("a", vec![]),
            group_signature(vec![Signature::new("b", vec![])]),
            Signature::new("sum", vec![]),
            Signature::new("after", vec![]),
        ]);
        let kinds: Vec<_> = steps.iter().map(|s| s.subtask_type.clone()).collect();
        assert_eq!(kinds, vec![None, Some("chord".into()), None]);
        assert_eq!(chord_body(&steps[1]).map(|b| b.task), Some("sum".into()));
        assert_eq!(chord_header(&steps[1]).len(), 1);
    }

    #[test]
    fn python_chord_signatures_are_read() {
        let chord: Signature = serde_json::from_value(json!({
            "task": "celery.chord", "args": [], "subtask_type": "chord", "immutable": false,
            "options": {},
            "kwargs": {
                "kwargs": {},
                "header": {"task": "celery.group", "subtask_type": "group", "args": [], "options": {},
                           "kwargs": {"tasks": [{"task": "t.add", "args": [1, 1]}, {"task": "t.add", "args": [2, 2]}]}},
                "body": {"task": "t.sum", "args": [], "options": {"task_id": "body-1"}}
            }
        }))
        .expect("signature");
        assert_eq!(chord_header(&chord).len(), 2);
        assert_eq!(result_id(&chord), "body-1");
    }
}
