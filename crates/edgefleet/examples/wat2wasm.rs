//! Turns a WebAssembly text file into a module: `wat2wasm IN.wat OUT.wasm`. The benchmarks
//! use it to build the modules they deploy.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: wat2wasm IN.wat OUT.wasm".into());
    };
    let module = wat::parse_file(input)?;
    std::fs::write(output, module)?;
    Ok(())
}
