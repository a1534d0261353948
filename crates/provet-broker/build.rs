//! Records the git commit the binary is built from as `PROVET_BROKER_GIT_COMMIT` (for the
//! `broker_build_info` metric). It lives in the binary's crate so that a new commit rebuilds
//! only the binary, not the crates below it. Not `BROKER_...`: cargo also sets this variable
//! for `cargo run` and `cargo test`, and the configuration refuses unknown `BROKER_*` keys.
//! A `PROVET_BROKER_GIT_COMMIT` set for the build wins (an image built from a context without
//! `.git`); outside a checkout the metric says `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PROVET_BROKER_GIT_COMMIT");
    let commit = std::env::var("PROVET_BROKER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    if let Some(commit) = commit {
        // Only hex digits reach the label.
        let commit: String = commit
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(40)
            .collect();
        println!("cargo:rustc-env=PROVET_BROKER_GIT_COMMIT={commit}");
    }
    // Build again when HEAD moves: HEAD itself, and the branch it points at (worktrees keep
    // HEAD in their own git folder and branches in the common one).
    // A path that does not exist would make cargo run this script on every build.
    let watch = |path: Option<String>| {
        if let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
}
