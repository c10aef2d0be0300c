//! Settings files on the real `chorus-gateway` binary: the precedence matrix (flag, then
//! environment, then file, then default) seen from where the process really listens, the file
//! named by `--config` or `CHORUS_CONFIG`, and a bad file's errors with their lines.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chorus_testkit::{Process, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_chorus-gateway");

/// A file in a fresh temporary directory.
fn file(name: &str, text: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("chorus-config-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chorus.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the gateway with `args` and `env` and returns the one port of `ports` it answers
/// `/healthz` on.
async fn listening_port(args: &[String], env: &[(&str, &str)], ports: &[u16]) -> u16 {
    let _gateway = Process::spawn(BIN, args, env).unwrap();
    let answers = async |port: u16| {
        let url = format!("http://127.0.0.1:{port}/healthz");
        matches!(reqwest::get(url).await, Ok(r) if r.status().is_success())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut up = Vec::new();
        for &port in ports {
            if answers(port).await {
                up.push(port);
            }
        }
        match up.as_slice() {
            [port] => return *port,
            [] if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("the gateway should answer on exactly one of {ports:?}: {up:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_the_environment_which_beats_the_file_which_beats_the_default() {
    let (p_file, p_env, p_flag) = (free_port(), free_port(), free_port());
    let path = file(
        "matrix",
        &format!(
            "# a gateway's settings\ngateway-listen = \"127.0.0.1:{p_file}\"\nmetrics-listen = \"off\"\n\
             redis-url = \"redis://127.0.0.1:1\"\n"
        ),
    );
    let config = path.to_str().unwrap().to_owned();
    let ports = [p_file, p_env, p_flag];
    let env_listen = format!("127.0.0.1:{p_env}");

    let with_file = ["--config".to_owned(), config.clone()];
    assert_eq!(listening_port(&with_file, &[], &ports).await, p_file);
    let from_env_var = listening_port(&[], &[("CHORUS_CONFIG", &config)], &ports).await;
    assert_eq!(from_env_var, p_file, "CHORUS_CONFIG names the file too");
    let env = [("CHORUS_GATEWAY_LISTEN", env_listen.as_str())];
    assert_eq!(listening_port(&with_file, &env, &ports).await, p_env);
    let mut with_flag = with_file.to_vec();
    with_flag.extend(["--gateway-listen".to_owned(), format!("127.0.0.1:{p_flag}")]);
    assert_eq!(listening_port(&with_flag, &env, &ports).await, p_flag);
}

#[test]
fn a_bad_file_is_refused_with_each_problem_and_its_line() {
    let path = file(
        "bad",
        "gateway-listen = \"127.0.0.1:1\"\ncolour = \"blue\"\nqueue-max-bytes = \"lots\"\n",
    );
    let config = path.to_str().unwrap();
    let checked = Command::new(BIN)
        .args(["config", "check", config])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{out}");
    assert!(out.contains("line 2: colour: no such setting"), "{out}");
    assert!(out.contains("line 3: queue-max-bytes:"), "{out}");

    let started = Command::new(BIN)
        .args(["--config", config])
        .output()
        .unwrap();
    assert_eq!(started.status.code(), Some(2));
    let err = String::from_utf8_lossy(&started.stderr);
    assert!(err.contains("line 2: colour: no such setting"), "{err}");
}

#[test]
fn the_printed_defaults_are_every_setting_and_check_clean() {
    let printed = Command::new(BIN)
        .args(["config", "defaults"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    for setting in [
        "gateway-listen",
        "metrics-listen",
        "redis-url",
        "history-rate",
        "log-format",
    ] {
        assert!(
            text.contains(&format!("# {setting} = ")),
            "{setting} in the defaults"
        );
    }
    // Every default, uncommented, is a valid file.
    let uncommented: String = text
        .lines()
        .filter(|l| l.starts_with("# ") && l.contains(" = ") && !l.contains("no default"))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    let path = file("defaults", &uncommented);
    let checked = Command::new(BIN)
        .args(["config", "check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
}
