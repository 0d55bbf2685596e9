//! The `celeriac` command: the generic CLI with no tasks of its own (send tasks by
//! name, read results, inspect and purge queues, benchmark a broker). Applications
//! get the same commands plus a worker for their tasks with `celeriac::cli::run(app)`.

use anyhow::Context;

/// mimalloc instead of glibc's malloc: a worker allocates and frees a few dozen small
/// blocks per message (decoded headers, strings), and glibc's malloc and free were a
/// quarter of the instructions of a Redis drain (BENCHMARKS.md, issue 9). Built
/// without transparent huge pages (`no_thp`): with them each touched 2 MiB page
/// counted whole in the RSS, and a draining worker's peak went 16 → 30 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // One runtime thread unless TOKIO_WORKER_THREADS says otherwise (see
    // `celeriac::runtime` for why a worker runs faster on one).
    celeriac::runtime::worker_runtime()
        .context("starting the async runtime")?
        .block_on(celeriac::cli::run_builder(celeriac::App::builder(
            "celeriac",
        )))
}
