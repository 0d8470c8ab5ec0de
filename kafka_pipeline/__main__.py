import sys

from kafka_pipeline.cli import main

sys.exit(main())
