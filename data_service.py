"""Run a tf.data service dispatcher or worker, so that other machines make the training batches.

When one host's cores cannot feed its accelerators, the training input pipeline (graph ops
only, cfg.pipeline "tf") can run on other machines: one dispatcher, any number of workers, and
train.py pointed at the dispatcher.

    python data_service.py dispatcher --port 5050                      # once, on any machine
    python data_service.py worker --dispatcher HOST:5050 --port 5051   # on each data machine
    python train.py --preset paper --data_service_address grpc://HOST:5050 \
        --data_dir /shared/data --records_dir /shared/data/records

train.py reads the records and sends the whole dataset (its graph, the records as constants,
the image paths made absolute) to the dispatcher; the workers read and decode the images
themselves, so every worker needs the same TensorFlow version and the images at the same
absolute paths as the training host (a shared file system, or copies at the same place). The
dispatcher hands the record indices out in splits ("distributed epoch"), so each worker makes
different samples and workers can be added while training runs. Skipped images are logged on
the workers' stderr. Validation batches are still made by the training host.
"""

from __future__ import annotations

import argparse
import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def start_server(role, port, dispatcher=None, host=None, intra_op_threads=0):
    """Start and return a DispatchServer or a WorkerServer (it serves until the process ends).

    port 0 picks a free port. A worker tells its clients to reach it at host:port, host
    defaulting to this machine's name. intra_op_threads > 0 sizes TensorFlow's intra-op pool
    first (see dataset.intra_op_threads); it must come before TensorFlow starts.
    """
    import tensorflow as tf

    if intra_op_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)

    service = tf.data.experimental.service
    if role == "dispatcher":
        return service.DispatchServer(service.DispatcherConfig(port=port))
    address = f"{host or socket.gethostname()}:%port%"
    return service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher, worker_address=address, port=port))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("dispatcher", "worker"))
    parser.add_argument("--port", type=int, default=5050, help="port to serve on (default 5050)")
    parser.add_argument("--dispatcher", help="HOST:PORT of the dispatcher (workers only)")
    parser.add_argument("--host", help="name by which clients reach this worker (default: this "
                                       "machine's host name)")
    parser.add_argument("--intra_op_threads", type=int, default=1,
                        help="TensorFlow intra-op threads of a worker; 1 (the default) suits a "
                             "machine that only makes samples, 0 is TensorFlow's default")
    arguments = parser.parse_args(argv)
    if arguments.role == "worker" and not arguments.dispatcher:
        parser.error("a worker needs --dispatcher HOST:PORT")
    server = start_server(arguments.role, arguments.port, arguments.dispatcher, arguments.host,
                          arguments.intra_op_threads)
    if arguments.role == "dispatcher":
        print(f"dispatcher serving at {server.target}; train with "
              f"--data_service_address {server.target}", flush=True)
    else:
        print(f"worker serving on port {arguments.port} for {arguments.dispatcher}", flush=True)
    server.join()


if __name__ == "__main__":
    main()
