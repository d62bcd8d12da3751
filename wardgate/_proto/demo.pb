
á
wardgate/demo/v1/greeter.protowardgate.demo.v1""
HelloRequest
name (	Rname"«

HelloReply
message (	RmessageF
metadata (2*.wardgate.demo.v1.HelloReply.MetadataEntryRmetadata;
MetadataEntry
key (	Rkey
value (	Rvalue:82S
GreeterH
SayHello.wardgate.demo.v1.HelloRequest.wardgate.demo.v1.HelloReplybproto3