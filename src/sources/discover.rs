//! Finding the files a source's `paths` stand for.
//!
//! Plain paths and globs are both expanded on every poll: the file system is the source of
//! truth, and watcher events only make the next poll come sooner.
//!
//! A watched file's rotated generations (`auth.log.1`, `auth.log-20261122`, but not
//! compressed ones) belong to the set too: a rename by logrotate then only changes the path
//! of a file already tracked by identity, and a generation created and rotated away between
//! two polls (or while logwarden was down) is still found and read.

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use std::path::{Component, Path, PathBuf};

/// How deep a `**` pattern may descend, so a symlink loop or a huge tree stays bounded.
const MAX_RECURSION: usize = 16;
/// Endings of compressed generations, which are not text to tail.
const COMPRESSED: &[&str] = &[".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z", ".zip"];

/// A file of the set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// Where it is now; a tracked file's path is updated from this when it was renamed.
    pub path: PathBuf,
    /// Whether it is a rotated generation of a watched file rather than the file itself.
    pub rotated: bool,
}

/// A source's `paths` or `exclude` that cannot be compiled, with the pattern as written.
#[derive(Debug, thiserror::Error)]
pub enum PathSetError {
    #[error("bad path glob {pattern:?}: {error}")]
    Path {
        pattern: String,
        error: globset::Error,
    },
    #[error("bad exclude {pattern:?}: {error}")]
    Exclude {
        pattern: String,
        error: globset::Error,
    },
    /// The excludes compiled one by one but not as a set (a size limit of the engine).
    #[error("{0}")]
    Excludes(globset::Error),
}

/// The expanded form of one source's `paths` and `exclude`.
#[derive(Debug)]
pub struct PathSet {
    patterns: Vec<Pattern>,
    exclude: GlobSet,
}

#[derive(Debug)]
enum Pattern {
    Plain(PathBuf),
    Glob {
        base: PathBuf,
        matcher: GlobMatcher,
        depth: Option<usize>,
    },
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl PathSet {
    /// Compiles the patterns; errors name the bad pattern.
    pub fn new(paths: &[PathBuf], exclude: &[String]) -> Result<PathSet, PathSetError> {
        let mut patterns = Vec::new();
        for path in paths {
            let text = path.to_string_lossy();
            if !is_glob(&text) {
                patterns.push(Pattern::Plain(path.clone()));
                continue;
            }
            let mut base = PathBuf::new();
            let mut rest = 0;
            let mut recursive = false;
            let components: Vec<Component> = path.components().collect();
            for (i, c) in components.iter().enumerate() {
                let s = c.as_os_str().to_string_lossy();
                if is_glob(&s) {
                    rest = components.len() - i;
                    recursive = components[i..].iter().any(|c| c.as_os_str() == "**");
                    break;
                }
                base.push(c);
            }
            let matcher = Glob::new(&text)
                .map_err(|error| PathSetError::Path {
                    pattern: text.to_string(),
                    error,
                })?
                .compile_matcher();
            patterns.push(Pattern::Glob {
                base,
                matcher,
                depth: (!recursive).then_some(rest),
            });
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in exclude {
            builder.add(Glob::new(pattern).map_err(|error| PathSetError::Exclude {
                pattern: pattern.clone(),
                error,
            })?);
        }
        let exclude = builder.build().map_err(PathSetError::Excludes)?;
        Ok(PathSet { patterns, exclude })
    }

    /// Directories whose changes may add or replace files of this set (for watchers).
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        self.patterns
            .iter()
            .map(|p| match p {
                Pattern::Plain(path) => path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                Pattern::Glob { base, .. } => base.clone(),
            })
            .collect()
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.is_match(path) || path.file_name().is_some_and(|n| self.exclude.is_match(n))
    }

    /// The regular files that exist now (watched files, then their rotated generations),
    /// sorted by path, each once.
    pub fn expand(&self) -> Vec<Found> {
        let mut watched = Vec::new();
        // Plain paths name their generations even while the file itself is missing (between
        // a rename and the creation of the new file).
        let mut names = Vec::new();
        for pattern in &self.patterns {
            match pattern {
                Pattern::Plain(path) => {
                    if path.is_file() && !self.excluded(path) {
                        watched.push(path.clone());
                    }
                    names.push(path.clone());
                }
                Pattern::Glob {
                    base,
                    matcher,
                    depth,
                } => {
                    let limit = depth.unwrap_or(MAX_RECURSION);
                    let mut matched = Vec::new();
                    self.walk(base, matcher, limit, &mut matched);
                    names.extend(matched.iter().cloned());
                    watched.extend(matched);
                }
            }
        }
        watched.sort();
        watched.dedup();
        let mut out: Vec<Found> = watched
            .iter()
            .map(|p| Found {
                path: p.clone(),
                rotated: false,
            })
            .collect();
        for path in self.generations(&names) {
            if watched.binary_search(&path).is_err() {
                out.push(Found {
                    path,
                    rotated: true,
                });
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.path == b.path);
        out
    }

    /// Rotated generations of the named files: same directory, name continued by `.`, `-`
    /// or `_`, not compressed, not excluded.
    fn generations(&self, names: &[PathBuf]) -> Vec<PathBuf> {
        let mut by_dir: std::collections::BTreeMap<&Path, Vec<String>> = Default::default();
        for name in names {
            if let (Some(dir), Some(file)) = (name.parent(), name.file_name()) {
                by_dir
                    .entry(dir)
                    .or_default()
                    .push(file.to_string_lossy().into_owned());
            }
        }
        let mut out = Vec::new();
        for (dir, bases) in by_dir {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_generation = bases.iter().any(|base| {
                    name.strip_prefix(base.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with(['.', '-', '_']))
                });
                if !is_generation || COMPRESSED.iter().any(|ext| name.ends_with(ext)) {
                    continue;
                }
                let path = entry.path();
                if !self.excluded(&path) && path.is_file() {
                    out.push(path);
                }
            }
        }
        out
    }

    fn walk(&self, dir: &Path, matcher: &GlobMatcher, depth: usize, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let is_dir = kind.is_dir() || (kind.is_symlink() && path.is_dir());
            if is_dir {
                self.walk(&path, matcher, depth - 1, out);
            } else if matcher.is_match(&path) && !self.excluded(&path) && path.is_file() {
                out.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(found: Vec<Found>) -> Vec<PathBuf> {
        found.into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn expands_globs_plain_paths_and_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("nginx/sub")).unwrap();
        for f in [
            "a.log",
            "b.log",
            "c.log.gz",
            "nginx/x.log",
            "nginx/sub/y.log",
            "other.txt",
        ] {
            std::fs::write(d.join(f), "x\n").unwrap();
        }
        let set = PathSet::new(
            &[d.join("*.log*"), d.join("other.txt"), d.join("missing.log")],
            &["*.gz".to_string()],
        )
        .unwrap();
        assert_eq!(
            paths(set.expand()),
            vec![d.join("a.log"), d.join("b.log"), d.join("other.txt")]
        );
        let deep = PathSet::new(&[d.join("**/*.log")], &[]).unwrap();
        let found = paths(deep.expand());
        assert!(found.contains(&d.join("nginx/sub/y.log")) && found.contains(&d.join("a.log")));
    }

    #[test]
    fn rotated_generations_belong_to_the_set_even_while_the_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "auth.log.1",
            "auth.log-20261122",
            "auth.log.2.gz",
            "auth.logger",
            "auth.log.old",
            "kern.log.1",
        ] {
            std::fs::write(d.join(f), "x\n").unwrap();
        }
        let set = PathSet::new(&[d.join("auth.log")], &["*.old".to_string()]).unwrap();
        assert_eq!(
            set.expand(),
            vec![
                Found {
                    path: d.join("auth.log-20261122"),
                    rotated: true
                },
                Found {
                    path: d.join("auth.log.1"),
                    rotated: true
                },
            ]
        );
        std::fs::write(d.join("auth.log"), "x\n").unwrap();
        assert_eq!(
            set.expand()[0],
            Found {
                path: d.join("auth.log"),
                rotated: false
            }
        );
        assert_eq!(set.expand().len(), 3);
    }
}
