fn main() {
    std::process::exit(vendetta::cli::main(std::env::args_os().skip(1).collect()));
}
