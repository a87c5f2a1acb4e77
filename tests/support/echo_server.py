"""A gRPC echo server in Python, with grpcio-reflection (which serves only grpc.reflection.v1alpha).

Usage: echo_server.py DESCRIPTOR_SET

Serves every service of DESCRIPTOR_SET on 127.0.0.1 (a free port, printed as `port=N` on stdout): each
unary call answers its request, a server stream answers it three times, a client stream answers its last
message (an empty one when the stream had none). The Portico tests read the descriptors back through
reflection and compare the gateway's answers with those it gives for the same descriptors loaded other ways.
"""

import sys
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection


def load_pool(path):
    with open(path, "rb") as f:
        files = list(descriptor_pb2.FileDescriptorSet.FromString(f.read()).file)
    pool = descriptor_pool.DescriptorPool()
    added = set()
    while files:
        ready = [f for f in files if all(d in added for d in f.dependency)]
        if not ready:
            raise SystemExit("descriptor set has unresolvable imports: %s" % [f.name for f in files])
        for f in ready:
            # Unknown extensions (google.api.http) survive the round trip as unknown fields.
            pool.AddSerializedFile(f.SerializeToString())
            added.add(f.name)
            files.remove(f)
    return pool, added


def identity(data):
    return data


class Echo(grpc.GenericRpcHandler):
    def __init__(self, pool):
        self.pool = pool

    def service(self, details):
        service_name, _, method_name = details.method.lstrip("/").partition("/")
        try:
            method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        except KeyError:
            return None
        if method.client_streaming and method.server_streaming:
            return None
        if method.client_streaming:
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: ([b""] + list(requests))[-1], identity, identity
            )
        if method.server_streaming:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: iter([request] * 3), identity, identity
            )
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request, identity, identity)


def main():
    pool, files = load_pool(sys.argv[1])
    services = [
        service.full_name
        for name in sorted(files)
        for service in pool.FindFileByName(name).services_by_name.values()
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((Echo(pool),))
    reflection.enable_server_reflection(services + [reflection.SERVICE_NAME], server, pool)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port=%d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
