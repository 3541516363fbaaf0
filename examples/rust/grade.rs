//! Runs a command the way a grader would: read-only host view, a time limit, captured output, and
//! the verdict, usage and enforcement report printed at the end.
//!
//! `cargo run -p rsandbox --example grade -- sh -c 'echo hello; id'`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = if args.is_empty() {
        vec!["id".to_string()]
    } else {
        args
    };
    let mut spec = rsandbox::Spec::new(args);
    spec.timeout = Some(10.0);
    spec.output_limit = Some(64 * 1024);
    match rsandbox::run(&spec) {
        Ok(result) => {
            print!(
                "{}",
                String::from_utf8_lossy(result.stdout.as_deref().unwrap_or_default())
            );
            eprint!(
                "{}",
                String::from_utf8_lossy(result.stderr.as_deref().unwrap_or_default())
            );
            println!(
                "verdict {:?}, status {:?}, wall {:.3}s, cpu {:.3}s",
                result.verdict,
                result.status,
                result.usage.wall_time,
                result.usage.user_time + result.usage.system_time
            );
            print!("{}", result.report.to_text());
            ExitCode::from(result.status.shell_code().clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("sandbox error: {e}");
            ExitCode::from(125)
        }
    }
}
