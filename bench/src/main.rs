//! An index of the benchmarks in this package; each is its own binary.

fn main() {
    println!(
        "provet-broker benchmarks (not tests), each a binary of this package:\n\
         \n\
         \x20 hookup-load   distinct hookups from concurrent senders against a release build,\n\
         \x20               on SQLite and PostgreSQL; msgs/s, latency, storage verified\n\
         \x20 discovery-load 10,000 tenants' OpenID Connect discovery against a local server\n\
         \x20               answering in 20 ms; total time against the ideal, peak RSS\n\
         \n\
         Build and run from the workspace root:\n\
         \x20 cargo build --release -p provet-broker -p broker-bench\n\
         \x20 target/release/hookup-load --backend both\n\
         \n\
         See bench/README.md."
    );
}
