fn main() {
    eprintln!("train_gpt: not built yet");
    std::process::exit(2);
}
