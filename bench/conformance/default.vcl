# Varnish for `make conformance`: the backend only; everything else is builtin.vcl.
# @NAME@ fields are filled in by bench/conformance/run.
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "@UP@";
}
