from cellwatch.cli import main

main()
