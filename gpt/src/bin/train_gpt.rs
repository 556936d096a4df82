//! `train_gpt`: the command-line front of the training loop (see `gpt::trainer::TrainArgs`).
//! Under `mpirun` (in a build with the `mpi` feature) each process is one data-parallel rank.

use std::io::Write;

fn main() {
    let dist = match gpt::dist::from_env() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let (rank, ranks) = (dist.rank(), dist.size());
    // Rank 0 logs; the other ranks only warn, naming themselves.
    let level = if rank == 0 { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(move |buf, record| {
            let who = if ranks > 1 && rank > 0 {
                format!("rank {rank}: ")
            } else {
                String::new()
            };
            match record.level() {
                log::Level::Info => writeln!(buf, "{who}{}", record.args()),
                level => writeln!(
                    buf,
                    "{who}{}: {}",
                    level.to_string().to_lowercase(),
                    record.args()
                ),
            }
        })
        .init();
    let args: gpt::trainer::TrainArgs = argh::from_env();
    // A panic on one rank must not leave the others waiting in a collective (nor this rank in
    // MPI_Finalize while unwinding): the panic message is printed, then the job is aborted.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gpt::trainer::train_with(&args, dist.as_ref())
    }));
    let Ok(result) = run else {
        if ranks > 1 {
            eprintln!("error: rank {rank} of {ranks} panicked (above); aborting all {ranks} ranks");
            dist.abort(101);
        }
        std::process::exit(101);
    };
    if let Err(e) = result {
        if ranks > 1 {
            // The other ranks may be waiting in a collective: end the whole job now.
            eprintln!("error: rank {rank} of {ranks}: {e}\nerror: aborting all {ranks} ranks");
            dist.abort(1);
        }
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    drop(dist); // finalizes MPI
}
