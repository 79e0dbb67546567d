from coca_search.cli import main

main()
