from balans_edge.cli import main

main()
