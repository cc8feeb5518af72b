from edgeops.cli import main

main()
