fn main() {
    std::process::exit(vendetta::main(std::env::args_os().skip(1).collect()));
}
