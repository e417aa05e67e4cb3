"""The sharded item table: TorchRec's sharding plan and layout for this cluster (sharding.py,
topology.py), the model wrapped around the sharded table (sharded_model.py), this rank's
pieces of the table (table_shards.py), the collectives training and evaluation need
(collectives.py), and every private torch/TorchRec API we rely on, version-checked
(private_api.py). The process group itself is runtime/process_group.py."""
