//! The broker conformance suite against the Redis broker: every test on a fresh
//! `global_keyprefix` of the server at `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), skipped when no server answers (unless
//! `CELERIAC_REQUIRE_SERVICES=1`).

use celeriac_broker::redis::testing::RedisHarness;
use celeriac_redis::testing::redis_url_or_skip;

celeriac_broker::broker_conformance_tests!(match redis_url_or_skip("redis_conformance") {
    Some(url) => RedisHarness::new(&url),
    None => return,
});
