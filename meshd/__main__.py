from meshd.cli.meshd_app import main

main()
