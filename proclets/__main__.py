from proclets.cli import main

main(prog_name="proclets")
