# Varnish for `make compare`, configured as a competent operator would for an API cache:
# request coalescing is Varnish's waiting list (on by default); grace serves stale answers
# while a background fetch revalidates them, and keeps serving them when the backend fails.
# @NAME@ fields are filled in by compare.py.
vcl 4.1;

backend api {
    .host = "127.0.0.1";
    .port = "@UP@";
}
backend fill {
    .host = "127.0.0.1";
    .port = "@FILL@";
}

sub vcl_recv {
    if (req.url ~ "^/fill/") {
        set req.backend_hint = fill;
    } else {
        set req.backend_hint = api;
    }
}

# One API behind one name: the key is the URL, as nginx's proxy_cache_key $request_uri and
# unherd's route keys (the built-in hash adds the Host header).
sub vcl_hash {
    hash_data(req.url);
    return (lookup);
}

sub vcl_backend_response {
    # Stale-while-revalidate and stale-if-error: keep serving for 5 minutes past the TTL.
    set beresp.grace = 5m;
    set beresp.keep = 5m;
    if (beresp.status >= 500) {
        if (bereq.is_bgfetch) {
            return (abandon);        # a failed refresh keeps the stale object
        }
        set beresp.ttl = 1s;
        set beresp.uncacheable = true;
        return (deliver);
    }
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
