use clap::Parser;
use peregrine::cli::{Cli, Command};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    peregrine::telemetry::init(cli.log_format);
    match cli.command {
        Command::Crd(args) => peregrine::cli::print_crds(&args)?,
        Command::Run(args) => peregrine::operator::run(*args).await?,
        Command::Replay(args) => peregrine::replay::run(args).await?,
        Command::Analyze(args) => peregrine::cli::write_stdout(&peregrine::offline::run(&args)?)?,
    }
    Ok(())
}
