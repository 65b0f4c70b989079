// unherd::Errc as a std::error_category (unherd/error.h): names and messages.
#include "unherd/error.h"

#include <boost/asio/error.hpp>
#include <boost/system/system_error.hpp>
#include <new>

namespace unherd {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "unherd"; }
  std::string message(int code) const override {
    switch (static_cast<Errc>(code)) {
      case Errc::wait_timeout:
        return "gave up waiting for the in-flight fetch (max_wait)";
      case Errc::too_many_waiters:
        return "too many callers are waiting for this key";
      case Errc::circuit_open:
        return "circuit breaker is open";
      case Errc::deadline_exceeded:
        return "retry deadline exceeded";
      case Errc::attempt_timeout:
        return "upstream attempt timed out";
      case Errc::cancelled:
        return "cancelled";
      case Errc::local_failure:
        return "failed on this side (out of descriptors, buffers or memory)";
    }
    return "unknown unherd error";
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

void throw_error(Errc e, const std::string& what) {
  throw std::system_error(make_error_code(e), what);
}

bool holds_error(const std::exception_ptr& ep, Errc e) noexcept {
  if (!ep) return false;
  try {
    std::rethrow_exception(ep);
  } catch (const std::system_error& err) {
    return err.code() == e;
  } catch (...) {
    return false;
  }
}

bool nobodys_fault(const std::exception_ptr& ep) noexcept {
  if (!ep) return false;
  try {
    std::rethrow_exception(ep);
  } catch (const std::system_error& err) {
    const std::error_code c = err.code();
    return c == Errc::cancelled || c == Errc::local_failure || c == Errc::circuit_open ||
           c == std::errc::operation_canceled;
  } catch (const boost::system::system_error& err) {
    return err.code() == boost::asio::error::operation_aborted;
  } catch (const std::bad_alloc&) {
    return true;
  } catch (const UsageError&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace unherd
