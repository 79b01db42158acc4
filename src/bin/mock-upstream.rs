//! `mock-upstream`: the OpenAI-compatible mock server used by integration and load tests.
//! Everything lives in [`ditto_gateway::mock`]; this is the command-line entry point.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", ditto_gateway::mock::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match ditto_gateway::mock::parse_args(args) {
        Ok(opts) => opts,
        Err(why) => {
            eprintln!("mock-upstream: {why}\n{}", ditto_gateway::mock::USAGE);
            return ExitCode::from(2);
        }
    };
    match ditto_gateway::mock::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
