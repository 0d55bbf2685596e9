//! Celery's built-in workflow tasks, so `xmap`, `xstarmap` and `chunks` sent by
//! Python (or by `celeriac::canvas`) run on celeriac workers:
//!
//! - `celery.map(task, it)`: calls `task` once per item of `it`, in this worker, and
//!   returns the list of results;
//! - `celery.starmap(task, it)`: the same with each item spread as the arguments.
//!
//! `task` is a signature; only its name is used (as in Celery). The task must be
//! registered in this worker. A failing call fails the whole map.

use std::sync::Arc;

use celeriac_core::{
    Map, Signature, Task, TaskContext, TaskError, TaskFuture, TaskOptions, TaskRegistry, Value,
};

/// Whether each item is one argument (`map`) or the argument list (`starmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spread {
    One,
    Star,
}

struct MapTask {
    name: &'static str,
    spread: Spread,
    tasks: TaskRegistry,
    options: TaskOptions,
}

/// Adds `celery.map` and `celery.starmap` to `registry` (unless it has its own),
/// running the tasks `registry` holds.
pub fn with_builtins(mut registry: TaskRegistry) -> TaskRegistry {
    let tasks = registry.clone();
    for (name, spread) in [
        ("celery.map", Spread::One),
        ("celery.starmap", Spread::Star),
    ] {
        if registry.get(name).is_none() {
            registry.register(Arc::new(MapTask {
                name,
                spread,
                tasks: tasks.clone(),
                options: TaskOptions::default(),
            }));
        }
    }
    registry
}

/// The `task` and `it` arguments, positional or by keyword.
fn arguments(
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<(Signature, Vec<Value>), TaskError> {
    let task = kwargs
        .get("task")
        .or_else(|| args.first())
        .ok_or_else(|| TaskError::InvalidArguments("missing the `task` signature".into()))?;
    let task: Signature = serde_json::from_value(task.clone())
        .map_err(|e| TaskError::InvalidArguments(format!("`task` is not a signature: {e}")))?;
    let items = match kwargs.get("it").or_else(|| args.get(1)) {
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(TaskError::InvalidArguments(format!(
                "`it` must be a list, got {other}"
            )))
        }
        None => return Err(TaskError::InvalidArguments("missing `it`".into())),
    };
    Ok((task, items))
}

impl Task for MapTask {
    fn name(&self) -> &str {
        self.name
    }

    fn options(&self) -> &TaskOptions {
        &self.options
    }

    fn check_args(&self, args: &[Value], kwargs: &Map<String, Value>) -> Result<(), TaskError> {
        arguments(args, kwargs).map(|_| ())
    }

    fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskFuture {
        let spread = self.spread;
        let tasks = self.tasks.clone();
        Box::pin(async move {
            let (signature, items) = arguments(&args, &kwargs)?;
            let task = tasks.get(&signature.task).cloned().ok_or_else(|| {
                TaskError::fail(
                    "NotRegistered",
                    format!("{} is not registered in this worker", signature.task),
                )
            })?;
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let call_args = match (spread, item) {
                    (Spread::Star, Value::Array(list)) => list,
                    (Spread::Star, other) => {
                        return Err(TaskError::InvalidArguments(format!(
                            "starmap items must be argument lists, got {other}"
                        )))
                    }
                    (Spread::One, item) => vec![item],
                };
                results.push(task.run(ctx.clone(), call_args, Map::new()).await?);
            }
            Ok(Value::Array(results))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::FnTask;
    use serde_json::json;

    fn registry() -> TaskRegistry {
        let mut registry = TaskRegistry::new();
        registry.register(Arc::new(FnTask::new(
            "t.add",
            TaskOptions::default(),
            |_ctx, args: Vec<Value>, _kw| async move {
                Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>()))
            },
        )));
        with_builtins(registry)
    }

    fn ctx() -> TaskContext {
        TaskContext::builder("id", "celery.map").build()
    }

    #[tokio::test]
    async fn map_and_starmap_call_the_task_per_item() {
        let registry = registry();
        let task = json!({"task": "t.add", "args": [], "kwargs": {}, "options": {}});
        let map = registry.get("celery.map").expect("map").clone();
        let mut kwargs = Map::new();
        kwargs.insert("task".into(), task.clone());
        kwargs.insert("it".into(), json!([1, 2, 3]));
        assert_eq!(
            map.run(ctx(), vec![], kwargs).await.expect("map"),
            json!([1, 2, 3])
        );
        let starmap = registry.get("celery.starmap").expect("starmap").clone();
        let out = starmap
            .run(ctx(), vec![task, json!([[1, 2], [3, 4]])], Map::new())
            .await
            .expect("starmap");
        assert_eq!(out, json!([3, 7]));
    }

    #[tokio::test]
    async fn an_unknown_task_or_bad_items_fail_clearly() {
        let registry = registry();
        let map = registry.get("celery.starmap").expect("starmap").clone();
        let unknown = json!({"task": "t.nope"});
        let error = map
            .run(ctx(), vec![unknown, json!([[1]])], Map::new())
            .await
            .expect_err("unknown task");
        assert!(error.to_string().contains("not registered"), "{error}");
        let add = json!({"task": "t.add"});
        assert!(map
            .check_args(&[add.clone(), json!(5)], &Map::new())
            .is_err());
        let error = map
            .run(ctx(), vec![add, json!([1])], Map::new())
            .await
            .expect_err("not a list of lists");
        assert!(matches!(error, TaskError::InvalidArguments(_)));
    }
}
