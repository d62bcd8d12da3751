from wardgate.cli import main

main()
