//! An optional TOML file of settings, with the same names as the flags:
//!
//! ```toml
//! # chorus-gateway.toml
//! gateway-listen = "0.0.0.0:8000"
//! redis-url = "redis://redis:6379"
//! queue-max-bytes = "1MiB"
//! allowed-origins = ["https://app.example.com"]
//! ```
//!
//! Given with `--config FILE` (or `CHORUS_CONFIG`). Precedence: a flag on the command line,
//! then its environment variable, then the file, then the built-in default. The file is
//! applied by adding its settings to the command line *before* clap parses it, and only for
//! settings neither the command line nor the environment gives — so clap's own rules (flag
//! over environment over default) and its value checks apply to file values unchanged, and
//! an invalid value in the file fails exactly as the same flag would.
//!
//! `config check FILE` reports every unknown name and invalid value with its line;
//! `config defaults` prints a complete file with every setting commented out at its default.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The environment variable naming the settings file.
pub const CONFIG_ENV: &str = "CHORUS_CONFIG";

/// `--config FILE`, flattened into every binary's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// TOML file of settings named like the flags (`gateway-listen = "0.0.0.0:8000"`). Flags
    /// and environment variables override it. See `config defaults` for every setting.
    #[arg(long = "config", env = CONFIG_ENV, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

/// What is wrong with a settings file.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:\n{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Settings {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One wrong setting, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  line {}: {}: {}", self.line, self.key, self.message)
    }
}

/// The command line with the settings file's values added where neither the command line nor
/// the environment sets them. Unchanged when no file is named.
pub fn merged_args(
    command: &clap::Command,
    args: Vec<OsString>,
) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let (text, table) = read(&path)?;
    let settings = settings(command, &text, &table);
    if !settings.problems.is_empty() {
        return Err(ConfigFileError::Settings {
            path,
            problems: settings.problems,
        });
    }
    let given = |long: &str| {
        args.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        })
    };
    let mut merged = Vec::with_capacity(args.len() + settings.flags.len());
    merged.extend(args.first().cloned());
    for setting in settings.flags {
        let from_env = setting
            .env
            .as_ref()
            .is_some_and(|e| std::env::var_os(e).is_some());
        if !given(&setting.long) && !from_env {
            merged.extend(setting.args.into_iter().map(OsString::from));
        }
    }
    merged.extend(args.into_iter().skip(1));
    Ok(merged)
}

/// Every problem of a settings file: unknown names, values of the wrong shape, values the
/// flag's own parser refuses. Empty when the file is good.
pub fn check(command: &clap::Command, path: &Path) -> Result<Vec<Problem>, ConfigFileError> {
    let (text, table) = read(path)?;
    let settings = settings(command, &text, &table);
    let mut problems = settings.problems;
    // Each setting through the flag's own parser: the command line it stands for, alone.
    for setting in settings.flags {
        let mut args = vec![command.get_name().to_owned()];
        args.extend(setting.args);
        if let Err(e) = command.clone().try_get_matches_from(args) {
            problems.push(Problem {
                line: line_of(&text, &setting.key),
                key: setting.key,
                message: first_line(&e.to_string()),
            });
        }
    }
    problems.sort_by_key(|p| p.line);
    Ok(problems)
}

/// A complete settings file: every setting, commented out at its default, with its help.
pub fn defaults(command: &clap::Command) -> String {
    let mut out = format!(
        "# Settings of {name}: the same names as its flags. Flags and environment variables\n\
         # override this file; `{name} config check FILE` validates one.\n",
        name = command.get_name()
    );
    for arg in settings_args(command) {
        let Some(long) = arg.get_long() else { continue };
        out.push('\n');
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            for line in help.to_string().lines() {
                out.push_str(&format!("# {line}\n").replace("#  \n", "#\n"));
            }
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| toml_value(&v.to_string_lossy()))
            .collect();
        let value = if !arg.get_action().takes_values() {
            "false".to_owned()
        } else {
            match defaults.as_slice() {
                [] => "\"\"  # no default".to_owned(),
                [one] => one.clone(),
                many => format!("[{}]", many.join(", ")),
            }
        };
        out.push_str(&format!("# {long} = {value}\n"));
    }
    out
}

struct Setting {
    key: String,
    long: String,
    env: Option<OsString>,
    args: Vec<String>,
}

#[derive(Default)]
struct Settings {
    flags: Vec<Setting>,
    problems: Vec<Problem>,
}

/// The file's settings as flags, and what cannot be one.
fn settings(command: &clap::Command, text: &str, table: &toml::Table) -> Settings {
    let mut out = Settings::default();
    for (key, value) in table {
        let line = line_of(text, key);
        let problem = |message: String| Problem {
            line,
            key: key.clone(),
            message,
        };
        let Some(arg) = find(command, key) else {
            out.problems.push(problem("no such setting".into()));
            continue;
        };
        let long = arg.get_long().unwrap_or(key).to_owned();
        let args = if arg.get_action().takes_values() {
            match values(value) {
                Some(items) => items.into_iter().map(|v| format!("--{long}={v}")).collect(),
                None => {
                    out.problems.push(problem(
                        "expected a string, number, boolean or a list of them".into(),
                    ));
                    continue;
                }
            }
        } else {
            match value.as_bool() {
                Some(true) => vec![format!("--{long}")],
                Some(false) => Vec::new(),
                None => {
                    out.problems.push(problem("expected true or false".into()));
                    continue;
                }
            }
        };
        out.flags.push(Setting {
            key: key.clone(),
            long,
            env: arg.get_env().map(ToOwned::to_owned),
            args,
        });
    }
    out
}

/// The arguments a file may set: every flag with a long name but `config`, help and version.
fn settings_args(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command.get_arguments().filter(|a| {
        a.get_long()
            .is_some_and(|l| !matches!(l, "config" | "help" | "version"))
    })
}

fn find<'c>(command: &'c clap::Command, key: &str) -> Option<&'c clap::Arg> {
    settings_args(command).find(|a| a.get_long() == Some(key))
}

/// A TOML value as flag values: scalars as one, arrays as one each.
fn values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| values(i).filter(|v| v.len() == 1).map(|mut v| v.remove(0)))
            .collect(),
        _ => None,
    }
}

fn read(path: &Path) -> Result<(String, toml::Table), ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| ConfigFileError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    Ok((text, table))
}

/// `--config FILE`, `--config=FILE`, or the environment's `CHORUS_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else { continue };
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The 1-based line where `key` is set (1 when it cannot be found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let name = l.split('=').next().unwrap_or("").trim().trim_matches('"');
            l.contains('=') && name == key
        })
        .map_or(1, |i| i + 1)
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_owned()
}

/// A default value as TOML: numbers and booleans bare, everything else quoted.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok() || v == "true" || v == "false" {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    #[command(name = "chorus-example")]
    struct Cli {
        /// Where to listen.
        #[arg(
            long = "listen",
            env = "CHORUS_EXAMPLE_LISTEN_NEVER_SET",
            default_value = "0.0.0.0:1"
        )]
        listen: std::net::SocketAddr,
        /// How many.
        #[arg(long = "count", default_value_t = 3)]
        count: u32,
        /// Keys.
        #[arg(long = "key", value_delimiter = ',')]
        keys: Vec<String>,
        /// A switch.
        #[arg(long = "fast")]
        fast: bool,
        #[command(flatten)]
        config: ConfigArg,
    }

    fn file(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    fn parse(args: &[&str]) -> Cli {
        let args = args.iter().map(OsString::from).collect();
        let merged = merged_args(&Cli::command(), args).unwrap();
        Cli::try_parse_from(merged).unwrap()
    }

    #[test]
    fn the_file_fills_what_the_command_line_does_not_give() {
        let f = file("listen = \"127.0.0.1:7\"\ncount = 9\nkey = [\"a\", \"b\"]\nfast = true\n");
        let cli = parse(&["x", "--config", f.path()]);
        assert_eq!(cli.listen.to_string(), "127.0.0.1:7");
        assert_eq!(
            (cli.count, cli.keys.as_slice(), cli.fast),
            (9, &["a".to_owned(), "b".to_owned()][..], true)
        );
        let cli = parse(&["x", &format!("--config={}", f.path()), "--count", "4"]);
        assert_eq!(cli.count, 4, "a flag beats the file");
        assert_eq!(cli.listen.to_string(), "127.0.0.1:7");
        let cli = parse(&["x"]);
        assert_eq!(cli.count, 3, "no file: defaults");
    }

    #[test]
    fn bad_settings_are_reported_with_their_lines() {
        let f = file("count = 9\n\nlisten = \"nowhere\"\ncolour = \"blue\"\nfast = \"yes\"\n");
        let problems = check(&Cli::command(), Path::new(f.path())).unwrap();
        let lines: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            lines,
            [(3, "listen"), (4, "colour"), (5, "fast")],
            "{problems:?}"
        );
        assert!(problems[1].message.contains("no such setting"));
        let args = vec![OsString::from("x"), "--config".into(), f.path().into()];
        let err = merged_args(&Cli::command(), args).unwrap_err().to_string();
        assert!(err.contains("line 4: colour: no such setting"), "{err}");
    }

    #[test]
    fn the_defaults_file_is_complete_and_checks_clean_once_uncommented() {
        let text = defaults(&Cli::command());
        for name in ["listen", "count", "key", "fast"] {
            assert!(text.contains(&format!("# {name} = ")), "{name} in {text}");
        }
        assert!(!text.contains("# config ="));
        let uncommented: String = text
            .lines()
            .filter(|l| l.starts_with("# ") && l.contains(" = ") && !l.contains("no default"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let f = file(&uncommented);
        assert_eq!(check(&Cli::command(), Path::new(f.path())).unwrap(), []);
    }

    /// A file in the temporary directory, removed when dropped.
    mod tempfile_path {
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct TempFile(std::path::PathBuf);

        impl TempFile {
            pub fn new(text: &str) -> Self {
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "chorus-config-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }

            pub fn path(&self) -> &str {
                self.0.to_str().unwrap()
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
