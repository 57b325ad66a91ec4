from pyops.cli import main

main()
