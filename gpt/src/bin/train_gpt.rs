//! `train_gpt`: the command-line front of the training loop (see `gpt::trainer::TrainArgs`).

use std::io::Write;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "{}", record.args()),
            level => writeln!(
                buf,
                "{}: {}",
                level.to_string().to_lowercase(),
                record.args()
            ),
        })
        .init();
    let args: gpt::trainer::TrainArgs = argh::from_env();
    if let Err(e) = gpt::trainer::train(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
