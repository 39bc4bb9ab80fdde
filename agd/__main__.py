from agd.cli import main

main()
