"""The local stack: the same event chain as in AWS, on one machine (moto server + a Lambda stand-in)."""
