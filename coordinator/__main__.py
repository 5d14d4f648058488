from coordinator.launcher import main

main()
