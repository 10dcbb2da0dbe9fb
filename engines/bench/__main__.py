from engines.bench.cli_impl import main

main()
