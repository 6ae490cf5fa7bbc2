from fbmem_data.cli.app import main

main()
