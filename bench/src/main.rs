//! An index of the benchmarks in this package; each is its own binary.

fn main() {
    println!(
        "provet-broker benchmarks (not tests), each a binary of this package, each against a\n\
         release build at the daemon's default configuration, each beside a baseline:\n\
         \n\
         \x20 hookup-load      5,000 distinct hookups from 64 senders, credential check on, on SQLite\n\
         \x20                  and PostgreSQL; beside it the same burst with the check off\n\
         \x20 webhook-load     the same 5,000 hookups without and with a webhook registered, SQLite and\n\
         \x20                  PostgreSQL: rate beside rate, every event delivered, commit->receipt p50/p99\n\
         \x20 token-load       the cached-token endpoint under wrk (64 connections) against bare-handler,\n\
         \x20                  alternating; req/s ratio, p99; RSS with 10,000 tenants' tokens cached\n\
         \x20 refresh-storm    force_refresh over 1,000 tenants, 64 connections, SQLite and PostgreSQL;\n\
         \x20                  beside it the cached path over the same tenants\n\
         \x20 refresh-replicas 3 replicas on one PostgreSQL database: force_refresh spread over them,\n\
         \x20                  and each tenant's force_refresh sent to all 3 at once (coalescing)\n\
         \x20 refresh-burst    100 concurrent callers on a just-expired authorization-code token\n\
         \x20 discovery-load   10,000 tenants' OpenID Connect discovery against a 20 ms local server\n\
         \x20 bare-handler     the baseline for token-load: actix-web writing a token-sized JSON body\n\
         \n\
         Build and run from the workspace root:\n\
         \x20 cargo build --release -p provet-broker -p broker-bench\n\
         \x20 target/release/hookup-load\n\
         \x20 target/release/token-load        (needs wrk: apt-get install wrk)\n\
         \x20 target/release/refresh-storm\n\
         \x20 target/release/refresh-replicas\n\
         \n\
         Every benchmark takes --binary PATH (default target/release/provet-broker).\n\
         See bench/README.md."
    );
}
