// Compiled (not run) by examples/run under -Wall -Wextra -Werror: a program that names only the
// options it cares about, in designated initializers, gets no warning from unherd's aggregates
// (every member has a default, so -Wmissing-field-initializers stays quiet).
#include <unherd/coordinator.h>
#include <unherd/tier.h>

#include <string>

using namespace std::chrono_literals;

int main() {
  const unherd::Ttl ttl{.fresh = 30s};
  const unherd::CallPolicy policy{.ttl = ttl};
  const unherd::FlightOptions flight{.max_wait = 1s};
  const unherd::RetryOptions retry{.max_attempts = 2};
  const unherd::BreakerOptions breaker{.window = 10};
  const unherd::CacheOptions cache{.capacity = 1 << 20};
  const unherd::CoordinatorOptions coordinator{.cache = cache};
  const unherd::ResilienceOptions resilience{.may_retry = false};
  const unherd::Fetched<std::string> fetched{.value = "v"};
  const unherd::Answer<std::string> answer{.value = "v"};
  const unherd::TierRecord record{.value = "v"};
  const unherd::Codec<std::string> codec{.encode = [](const std::string& s) { return s; }};
  const unherd::FetchContext<std::string> context{.attempt = 2};
  const unherd::AttemptInfo info{.number = 2};
  const unherd::RetryVerdict verdict{.retryable = true};
  return (policy.ttl.fresh == 30s && flight.max_wait == 1s && retry.max_attempts == 2 &&
          breaker.window == 10 && coordinator.cache.capacity == cache.capacity &&
          !resilience.may_retry && fetched.value == answer.value && record.value == "v" &&
          codec.encode && context.attempt == 2 && info.number == 2 && verdict.retryable)
             ? 0
             : 1;
}
