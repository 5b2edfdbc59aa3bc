from icm.cli import main

main()
