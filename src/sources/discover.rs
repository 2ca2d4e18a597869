//! Finding the files a source's `paths` stand for.
//!
//! Plain paths and globs are both expanded on every poll: the file system is the source of
//! truth, and watcher events only make the next poll come sooner.

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use std::path::{Component, Path, PathBuf};

/// How deep a `**` pattern may descend, so a symlink loop or a huge tree stays bounded.
const MAX_RECURSION: usize = 16;

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
    pub fn new(paths: &[PathBuf], exclude: &[String]) -> Result<PathSet, String> {
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
                .map_err(|e| format!("bad path glob {text:?}: {e}"))?
                .compile_matcher();
            patterns.push(Pattern::Glob {
                base,
                matcher,
                depth: (!recursive).then_some(rest),
            });
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in exclude {
            builder.add(Glob::new(pattern).map_err(|e| format!("bad exclude {pattern:?}: {e}"))?);
        }
        let exclude = builder.build().map_err(|e| e.to_string())?;
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

    /// Whether a path belongs to this set (used when a tracked file is renamed).
    pub fn contains(&self, path: &Path) -> bool {
        !self.excluded(path)
            && self.patterns.iter().any(|p| match p {
                Pattern::Plain(plain) => plain == path,
                Pattern::Glob { matcher, .. } => matcher.is_match(path),
            })
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.is_match(path) || path.file_name().is_some_and(|n| self.exclude.is_match(n))
    }

    /// The regular files that exist now, sorted, without duplicates.
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for pattern in &self.patterns {
            match pattern {
                Pattern::Plain(path) => {
                    if path.is_file() && !self.excluded(path) {
                        out.push(path.clone());
                    }
                }
                Pattern::Glob {
                    base,
                    matcher,
                    depth,
                } => {
                    let limit = depth.unwrap_or(MAX_RECURSION);
                    self.walk(base, matcher, limit, &mut out);
                }
            }
        }
        out.sort();
        out.dedup();
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
            set.expand(),
            vec![d.join("a.log"), d.join("b.log"), d.join("other.txt")]
        );
        let deep = PathSet::new(&[d.join("**/*.log")], &[]).unwrap();
        let found = deep.expand();
        assert!(found.contains(&d.join("nginx/sub/y.log")) && found.contains(&d.join("a.log")));
        assert!(set.contains(&d.join("new.log")));
        assert!(!set.contains(&d.join("new.log.gz")));
    }
}
