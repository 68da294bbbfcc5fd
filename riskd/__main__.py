from riskd.cli import main

main()
