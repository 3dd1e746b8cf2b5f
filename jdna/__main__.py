from jdna.commands.app import main

main()
