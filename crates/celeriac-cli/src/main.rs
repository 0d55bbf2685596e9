//! The `celeriac` command: the generic CLI with no tasks of its own (send tasks by
//! name, read results, inspect and purge queues, benchmark a broker). Applications
//! get the same commands plus a worker for their tasks with `celeriac::cli::run(app)`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    celeriac::cli::run_builder(celeriac::App::builder("celeriac")).await
}
