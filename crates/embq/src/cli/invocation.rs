//! How the user runs this binary again from where they stand: the prefix of the command the
//! demo suggests last (`embq`, `cargo run -p embq --`, or this binary's own path).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// How to invoke embq again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `embq` on `PATH` is this very binary.
    Installed,
    /// A build in a cargo target directory, run from inside a cargo project.
    Cargo {
        /// Built with `--release` (so `cargo run` needs it too, or it would build again in debug).
        release: bool,
    },
    /// Anything else: this binary's own path works from anywhere.
    Path(PathBuf),
}

impl Invocation {
    /// Works out the invocation for the running process.
    pub fn current() -> Self {
        let Ok(exe) = std::env::current_exe() else {
            return Self::Installed;
        };
        let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
        let on_path = std::env::var_os("PATH").and_then(|p| find_on_path("embq", &p));
        let is_self = on_path.and_then(|p| std::fs::canonicalize(p).ok()).is_some_and(|p| p == exe);
        let in_project = std::env::current_dir().is_ok_and(|d| in_cargo_project(&d));
        decide(&exe, is_self, in_project)
    }

    /// The words that precede a subcommand, ready for a shell.
    pub fn prefix(&self) -> String {
        match self {
            Self::Installed => "embq".into(),
            Self::Cargo { release: false } => "cargo run -p embq --".into(),
            Self::Cargo { release: true } => "cargo run --release -p embq --".into(),
            Self::Path(p) => shell_quote(&p.to_string_lossy()),
        }
    }
}

/// The decision itself: the installed name when `PATH` leads here; `cargo run` for a cargo
/// build when the user stands in a cargo project (where `cargo run -p embq` finds it); else
/// the binary's path, which works from any directory.
pub fn decide(exe: &Path, path_embq_is_self: bool, cwd_in_cargo_project: bool) -> Invocation {
    if path_embq_is_self {
        return Invocation::Installed;
    }
    match cargo_profile(exe) {
        Some(profile) if cwd_in_cargo_project => Invocation::Cargo { release: profile == "release" },
        _ => Invocation::Path(exe.to_path_buf()),
    }
}

/// The profile folder (`debug`, `release`, …) when `exe` sits in a cargo target directory:
/// `<target>/<profile>/embq`, where cargo names the folder `target` or tags it with
/// `CACHEDIR.TAG` (a `CARGO_TARGET_DIR` elsewhere).
fn cargo_profile(exe: &Path) -> Option<&str> {
    let profile_dir = exe.parent()?;
    let target = profile_dir.parent()?;
    let is_target = target.file_name() == Some(OsStr::new("target")) || target.join("CACHEDIR.TAG").is_file();
    is_target.then(|| profile_dir.file_name().and_then(OsStr::to_str)).flatten()
}

/// Whether `dir` or one of its ancestors holds a `Cargo.toml`, as `cargo run` requires.
pub fn in_cargo_project(dir: &Path) -> bool {
    dir.ancestors().any(|d| d.join("Cargo.toml").is_file())
}

/// The first `name` file in the `PATH` value `path`.
fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `s` as one shell word: unchanged when it holds only safe characters, else single-quoted.
pub(super) fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invocation_follows_where_the_binary_lives_and_where_the_user_stands() {
        let debug = Path::new("/src/embq/target/debug/embq");
        let release = Path::new("/src/embq/target/release/embq");
        let installed = Path::new("/home/u/.cargo/bin/embq");
        let cases = [
            // (exe, PATH's embq is this binary, cwd in a cargo project, expected prefix)
            (installed, true, false, "embq"),
            (debug, true, true, "embq"),
            (debug, false, true, "cargo run -p embq --"),
            (release, false, true, "cargo run --release -p embq --"),
            (debug, false, false, "/src/embq/target/debug/embq"),
            (installed, false, true, "/home/u/.cargo/bin/embq"),
            (Path::new("/opt/my tools/embq"), false, false, "'/opt/my tools/embq'"),
        ];
        for (exe, is_self, in_project, want) in cases {
            assert_eq!(decide(exe, is_self, in_project).prefix(), want, "{exe:?} {is_self} {in_project}");
        }
    }

    #[test]
    fn a_cargo_project_is_found_from_any_folder_below_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let below = dir.path().join("a/b");
        std::fs::create_dir_all(&below).expect("mkdir");
        std::fs::write(dir.path().join("Cargo.toml"), "").expect("write");
        assert!(in_cargo_project(&below));
        let path = std::env::join_paths([dir.path().join("missing"), dir.path().to_path_buf()]).expect("join");
        assert_eq!(find_on_path("Cargo.toml", &path), Some(dir.path().join("Cargo.toml")));
        assert_eq!(find_on_path("embq", &path), None);
    }

    #[test]
    fn quoting_keeps_one_shell_word() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("/usr/bin/embq"), "/usr/bin/embq");
    }
}
