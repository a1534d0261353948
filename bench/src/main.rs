//! An index of the benchmarks in this package; each is its own binary.

fn main() {
    println!(
        "provet-broker benchmarks (not tests), each a binary of this package:\n\
         \n\
         \x20 hookup-load   distinct hookups from concurrent senders against a release build,\n\
         \x20               on SQLite and PostgreSQL; msgs/s, latency, storage verified\n\
         \x20 discovery-load 10,000 tenants' OpenID Connect discovery against a local server\n\
         \x20               answering in 20 ms; total time against the ideal, peak RSS\n\
         \x20 token-load    the cached-token endpoint under wrk (64 connections) against bare-handler,\n\
         \x20               alternating; req/s ratio, p99; RSS with 10,000 tenants' tokens cached\n\
         \x20 bare-handler  the baseline for token-load: actix-web writing a token-sized JSON body\n\
         \x20 refresh-burst 100 concurrent callers on a just-expired authorization-code token: one\n\
         \x20               refresh at a stub provider; p50/p99, refreshes per round\n\
         \n\
         Build and run from the workspace root:\n\
         \x20 cargo build --release -p provet-broker -p broker-bench\n\
         \x20 target/release/hookup-load --backend both\n\
         \x20 target/release/token-load        (needs wrk: apt-get install wrk)\n\
         \x20 target/release/refresh-burst\n\
         \n\
         See bench/README.md."
    );
}
