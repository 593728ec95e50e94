//! `.dockerignore` matching with Docker's rules.
//!
//! Patterns are anchored at the context root; `*` and `?` stay within one
//! path segment, `**` spans any number of segments (`**/` also zero), `[..]`
//! is a character class and `\` escapes. A pattern that matches a directory
//! excludes everything below it. `!` re-includes; the last matching pattern
//! wins. `.git` is excluded by default (a `!.git` line brings it back).

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    glob: String,
    negate: bool,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore`, after the default `.git` rule.
    pub fn parse(text: &str) -> Self {
        let mut ig = DockerIgnore {
            patterns: vec![Pattern {
                glob: ".git".into(),
                negate: false,
            }],
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let glob = clean(body);
            if glob.is_empty() {
                continue;
            }
            ig.patterns.push(Pattern { glob, negate });
        }
        ig
    }

    /// Whether a `!` pattern exists (excluded directories must then still be
    /// walked, since something below them may come back).
    pub fn has_negations(&self) -> bool {
        self.patterns.iter().any(|p| p.negate)
    }

    /// Whether the path (relative to the context root, `/`-separated) is
    /// excluded from the build context.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let mut excluded = false;
        for p in &self.patterns {
            if matches_path_or_parent(&p.glob, &path) {
                excluded = !p.negate;
            }
        }
        excluded
    }
}

/// Cleans a path like Go's filepath.Clean, without a leading `/`.
fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

fn matches_path_or_parent(glob: &str, path: &str) -> bool {
    let g = glob.as_bytes();
    let t = path.as_bytes();
    glob_match(g, t)
        || t.iter()
            .enumerate()
            .any(|(i, &b)| b == b'/' && glob_match(g, &t[..i]))
}

fn glob_match(p: &[u8], t: &[u8]) -> bool {
    if p.is_empty() {
        return t.is_empty();
    }
    if p.starts_with(b"**") {
        let rest = &p[2..];
        if let Some(rest) = rest.strip_prefix(b"/") {
            if glob_match(rest, t) {
                return true;
            }
            return t
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && glob_match(rest, &t[i + 1..]));
        }
        return (0..=t.len()).any(|i| glob_match(rest, &t[i..]));
    }
    match p[0] {
        b'*' => {
            for i in 0..=t.len() {
                if i > 0 && t[i - 1] == b'/' {
                    break;
                }
                if glob_match(&p[1..], &t[i..]) {
                    return true;
                }
            }
            false
        }
        b'?' => !t.is_empty() && t[0] != b'/' && glob_match(&p[1..], &t[1..]),
        b'[' => {
            let Some((matched, used)) = t.first().and_then(|&c| class_match(&p[1..], c)) else {
                return false;
            };
            matched && t[0] != b'/' && glob_match(&p[1 + used..], &t[1..])
        }
        b'\\' if p.len() > 1 => !t.is_empty() && t[0] == p[1] && glob_match(&p[2..], &t[1..]),
        c => !t.is_empty() && t[0] == c && glob_match(&p[1..], &t[1..]),
    }
}

/// Matches `c` against a class body (after `[`); returns whether it matched
/// and how many pattern bytes the class used (including `]`).
fn class_match(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(p.first(), Some(b'^') | Some(b'!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let mut lo = p[i];
        if lo == b'\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        let mut hi = lo;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            hi = p[i + 2];
            i += 2;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ig = DockerIgnore::parse(
            "# comment\n\nnode_modules\n*.log\n**/*.tmp\ndocs\n!docs/keep.md\nsecret?.txt\n/build/\n[ab].bin\n",
        );
        let cases = [
            (".git", true),
            (".git/config", true),
            ("node_modules", true),
            ("node_modules/x/index.js", true),
            ("src/node_modules", false),
            ("app.log", true),
            ("logs/app.log", false),
            ("a.tmp", true),
            ("deep/er/b.tmp", true),
            ("docs/readme.md", true),
            ("docs/keep.md", false),
            ("secret1.txt", true),
            ("secret12.txt", false),
            ("build/out.js", true),
            ("a.bin", true),
            ("c.bin", false),
            ("src/main.rs", false),
        ];
        for (path, excluded) in cases {
            assert_eq!(ig.is_excluded(path), excluded, "{path}");
        }
        assert!(ig.has_negations());
    }

    #[test]
    fn git_comes_back_with_negation_and_last_match_wins() {
        let ig = DockerIgnore::parse("!.git\n*\n!src\n");
        assert!(!ig.is_excluded("src/a.rs"));
        assert!(ig.is_excluded("README.md"));
        assert!(ig.is_excluded(".git/HEAD"));
        let ig = DockerIgnore::parse("!.git\n");
        assert!(!ig.is_excluded(".git/HEAD"));
    }

    #[test]
    fn double_star_forms() {
        let ig = DockerIgnore::parse("**\n!keep/**\n");
        assert!(ig.is_excluded("x/y"));
        assert!(!ig.is_excluded("keep/a/b"));
        let ig = DockerIgnore::parse("a/**/z\n");
        assert!(ig.is_excluded("a/z"));
        assert!(ig.is_excluded("a/b/c/z"));
        assert!(!ig.is_excluded("b/z"));
    }

    #[test]
    fn odd_patterns_do_not_panic() {
        let ig = DockerIgnore::parse("[\n[a-\n\\\n!\n../x\n");
        assert!(!ig.is_excluded("a"));
        assert!(ig.is_excluded("x"));
    }
}
