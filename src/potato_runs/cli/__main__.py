from potato_runs.cli import main

main()
